"""What the device can do, and the settings that follow from it: bf16 capability, the precision `train.amp: auto`
picks, channels_last's default, and the backend flags (cudnn.benchmark, TF32) a run sets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# the CPU features under which bf16 autocast runs natively (oneDNN bf16 kernels); without them it is emulated
# and several times slower than fp32 (measured ~10x on an AVX2-only CPU)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where that is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Bf16Support:
    """Whether bf16 autocast is fast on a device, and the evidence it was decided by (one phrase for the log)."""

    fast: bool
    reason: str


def bf16_support(device: torch.device | str) -> Bf16Support:
    """CUDA: torch.cuda.is_bf16_supported() (compute capability 8.0+ has bf16 tensor cores). CPU: by its flags,
    AMX-BF16 or AVX512-BF16 (native bf16 dot products); without them bf16 is emulated and slow. A decision by
    flags, not by a timing: it costs nothing and is the same on every run of a machine (short timing probes on a
    shared CPU flipped either way)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ok = torch.cuda.is_bf16_supported(including_emulation=False) if _takes_emulation() else major >= 8
        return Bf16Support(bool(ok), f"CUDA compute capability {major}.{minor}"
                                     f"{' has' if ok else ' lacks'} bf16 tensor cores")
    flags = cpu_flags()
    if flags:
        found = [f for f in CPU_BF16_FLAGS if f in flags]
    else:  # no /proc/cpuinfo: torch's own query
        checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        found = [flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]
    if found:
        return Bf16Support(True, f"CPU flags: {', '.join(found)}")
    return Bf16Support(False, f"CPU without {' or '.join(CPU_BF16_FLAGS)} in its flags")


def _takes_emulation() -> bool:
    import inspect

    return "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters


def choose_amp(amp: str, device: torch.device | str) -> tuple[str, str]:
    """`train.amp` -> (off | bf16 | fp16, why): auto is bf16 where bf16_support says fast, else off (fp32)."""
    if amp != "auto":
        return amp, "set in the config"
    support = bf16_support(device)
    return ("bf16" if support.fast else "off"), f"auto: {support.reason}"


def choose_channels_last(value: bool | str, device: torch.device | str) -> bool:
    """`train.channels_last`: auto is on for CUDA (tensor-core convolutions want NHWC), off on CPU."""
    if value == "auto":
        return torch.device(device).type == "cuda"
    return bool(value)


def resolve_auto(cfg, device: torch.device | str):
    """A copy of the Config `cfg` with `train.amp` and `train.channels_last` resolved for `device` (itself when
    neither is auto)."""
    if cfg.train.amp != "auto" and cfg.train.channels_last != "auto":
        return cfg
    import copy

    out = copy.deepcopy(cfg)
    out.train.amp = choose_amp(cfg.train.amp, device)[0]
    out.train.channels_last = choose_channels_last(cfg.train.channels_last, device)
    return out


def set_backend_flags(device: torch.device | str, deterministic: bool = False) -> str:
    """cudnn.benchmark and TF32 matmul/convolutions on CUDA unless `deterministic`; then deterministic cuDNN
    algorithms and full fp32 instead. Returns what was set (one phrase for the log; empty on CPU)."""
    if torch.device(device).type != "cuda":
        return ""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")
    return "deterministic cuDNN, no TF32" if deterministic else "cudnn.benchmark, TF32 matmul"


def describe(device: torch.device | str) -> dict:
    """What `okkhor info` prints: the device, its bf16 capability and the precision `auto` picks."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    support = bf16_support(device)
    amp, why = choose_amp("auto", device)
    return {"device": str(device), "name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "bf16_fast": support.fast, "bf16_reason": support.reason,
            "auto_precision": "bf16" if amp == "bf16" else "fp32", "auto_reason": why,
            "channels_last_auto": choose_channels_last("auto", device)}
