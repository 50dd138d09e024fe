"""Training-step memory: measure the peak at a few batch sizes, fit fixed + per-sample bytes, pick a micro-batch.

How the peak is measured:
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, in this process. It counts every
  tensor this process's allocator holds (weights, gradients, optimizer state, activations, workspaces), not the
  CUDA context or allocator slack; the budget check keeps a headroom for those.
- CPU: one fresh process per batch size, forked from a server (`python -m okkhor.memory`) that imported torch,
  timm and okkhor but ran no torch operation. The child resets its peak resident set size (/proc/self/clear_refs,
  "5"), builds the model, runs the steps and reads VmHWM. A fresh process because glibc keeps freed heap pages
  resident: in one process a second measurement would reuse the first one's pages and read too low. The server
  runs with a fixed mmap threshold, so large tensors are mapped and unmapped one by one and RSS follows the live
  bytes (with glibc's dynamic threshold the peaks jumped by tens of MB with the heap layout). Resetting VmHWM
  rather than comparing ru_maxrss keeps import-time transients out; forking from one server pays the import
  (seconds) once instead of per batch size. The trainer's own heap may hold some freed pages beyond this:
  the headroom covers that.
Each measurement runs two full training steps (forward, the training loss, backward, optimizer step, plus the
mixer and EMA when the config has them): the first allocates the optimizer state, the second is a steady step.
"""
from __future__ import annotations

import gc
import json
import math
import os
import re
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from okkhor.config import Config, DataConfig, ModelConfig, TrainConfig, config_from_dict
from okkhor.errors import OkkhorError
from okkhor.targets import Targets

PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}   # --precision -> train.amp
DEFAULT_BATCHES = {"cpu": (2, 4, 8, 16), "cuda": (16, 32, 64, 128)}
HEADROOM = 0.9          # share of the budget the predicted peak may use (fragmentation, context, workspaces)
MAX_BATCH = 1 << 16     # cap when the per-sample cost is too small to resolve
CHILD_TIMEOUT_S = 600

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes of a size: `6GB` (10^9), `6GiB` or `6G` (2^30), `512MB`, `1.5g`, or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise OkkhorError(f"size {text!r}: expected a number with an optional unit, like 6GB, 6GiB, 512MB or "
                              f"1.5G (KB/MB/GB/TB are powers of 1000; K/M/G/T and KiB/MiB/GiB/TiB of 1024)")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise OkkhorError(f"size {text!r}: must be more than 0 bytes")
    return size


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fit_line(batches: Sequence[int], peaks: Sequence[float]) -> tuple[float, float]:
    """Least-squares (fixed, per_sample) with peak ~= fixed + per_sample * batch."""
    if len(batches) != len(peaks):
        raise ValueError(f"{len(batches)} batch sizes for {len(peaks)} peaks")
    if len(set(batches)) < 2:
        raise OkkhorError("memory: need measurements at two or more different batch sizes to fit a line")
    n = len(batches)
    mean_b, mean_p = sum(batches) / n, sum(peaks) / n
    var = sum((b - mean_b) ** 2 for b in batches)
    per_sample = sum((b - mean_b) * (p - mean_p) for b, p in zip(batches, peaks)) / var
    return mean_p - per_sample * mean_b, per_sample


@dataclass
class MemoryFit:
    """Measured training-step peaks (bytes) at some batch sizes and the model fitted to them.

    A step has two peaks: during forward/backward (weights, optimizer state, gradients and the activations, which
    grow with the batch) and during the optimizer step (weights, gradients, optimizer state and its temporaries,
    which do not). The first is fitted by least squares as fixed + per_sample * batch; the prediction is the larger
    of that line and the largest optimizer-step peak measured. At small batches the optimizer step is often the
    higher one: fitting a single line through the overall peaks would then see no growth and predict far too much
    room at large batches.
    """

    model: str
    image_size: int
    precision: str
    device: str
    method: str
    batches: list[int]
    peaks: list[int]                       # overall peak of the two steps, per batch size
    backward_peaks: list[int]              # peak of the forward/backward of the second step, per batch size
    optimizer_bytes: int                   # the largest optimizer-step peak
    fixed_bytes: float
    per_sample_bytes: float
    failed_batch: Optional[int] = None     # a batch size that ran out of memory while probing (CUDA)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def fitted(cls, model: str, image_size: int, precision: str, device: str, method: str,
               measured: Sequence[tuple[int, dict[str, int]]], **extra: Any) -> "MemoryFit":
        """The fit through (batch, {"peak", "backward", "optimizer"}) measurements."""
        batches = [b for b, _ in measured]
        backward = [m["backward"] for _, m in measured]
        return cls(model, image_size, precision, device, method, batches, [m["peak"] for _, m in measured],
                   backward, max(m["optimizer"] for _, m in measured), *fit_line(batches, backward), **extra)

    def predict(self, batch: int) -> float:
        return max(self.fixed_bytes + self.per_sample_bytes * batch, float(self.optimizer_bytes))

    def max_batch(self, budget: int, headroom: float = HEADROOM) -> int:
        """The largest batch whose predicted peak is within `headroom * budget` (0 when none is)."""
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        usable = headroom * budget
        room = usable - self.fixed_bytes
        if self.optimizer_bytes > usable or room < self.per_sample_bytes:
            return 0
        per_sample = max(self.per_sample_bytes, room / MAX_BATCH)
        largest = math.floor(room / per_sample + 1e-9)  # 1e-9: 0.9 * budget is not exact in binary
        if self.failed_batch is not None:
            largest = min(largest, self.failed_batch - 1)
        return max(0, min(largest, MAX_BATCH))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "image_size": self.image_size, "precision": self.precision,
                "device": self.device, "method": self.method, "batches": list(self.batches),
                "measured_bytes": list(self.peaks),
                "predicted_bytes": [round(self.predict(b)) for b in self.batches],
                "backward_peak_bytes": list(self.backward_peaks), "optimizer_step_bytes": self.optimizer_bytes,
                "fixed_bytes": round(self.fixed_bytes), "per_sample_bytes": round(self.per_sample_bytes),
                "failed_batch": self.failed_batch, "notes": list(self.notes)}


def plan_batch(max_batch: int, effective: int = 0) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for the largest batch that fits and the effective batch to reach.

    With an effective batch: its largest divisor that fits, when that is at least half of what fits (so the
    effective batch is exact); else the smallest micro-batch with the fewest accumulation steps. Without one: the
    largest fitting multiple of 8. Always micro * accum >= effective.
    """
    if max_batch < 1:
        raise OkkhorError("memory: not even a batch of 1 fits the budget")
    if effective <= 0:
        return (max_batch - max_batch % 8 if max_batch >= 8 else max_batch), 1
    if max_batch >= effective:
        return effective, 1
    for micro in range(max_batch, max_batch // 2, -1):
        if effective % micro == 0:
            return micro, effective // micro
    accum = math.ceil(effective / max_batch)
    return math.ceil(effective / accum), accum


# ------------------------------------------------------------------------------------------------ budgets

def available_ram() -> int:
    """MemAvailable, limited by the cgroup's memory limit when one is set."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            avail = min(avail, max(0, int(limit) - usage))
    return avail


def default_budget(device: Any) -> tuple[int, str]:
    """(bytes, what they are): on CUDA the free device memory plus what this process's allocator already holds;
    on CPU the available RAM."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device)), "free CUDA memory"
    return available_ram(), "available RAM"


# ------------------------------------------------------------------------------------------------ measuring

def _resolve_device(name: str):
    import torch

    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise OkkhorError(f"--device {name!r}: expected cpu, cuda or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OkkhorError(f"--device {name}: no CUDA device is available; use --device cpu")
    return torch.device(name)


def _check_precision(amp: str, device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise OkkhorError(f"precision fp16 needs a CUDA device (this is {device.type}); use bf16 or fp32")


class _CudaMeter:
    """Peak bytes this process's CUDA allocator handed out since the last reset."""

    def __init__(self, device: Any):
        self.device = device

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


class _RssMeter:
    """Peak anonymous resident memory of this process since the last reset, above what it held at creation.

    VmHWM counts file-backed pages too (library code that a forked child faults in again); those are shared and
    reclaimable, so they are taken out: peak = VmHWM - RssFile - RssShmem now, less RssAnon at creation. Each
    phase's code is touched before its peak, so file pages added after the peak are few.
    """

    def __init__(self) -> None:
        self.reset()
        self.base = _read_status("RssAnon")

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # VmHWM := the current RSS
        except OSError as exc:
            raise OkkhorError(f"memory: cannot reset the peak RSS (/proc/self/clear_refs: {exc.strerror}); CPU "
                              "memory probing needs Linux") from None

    def read(self) -> int:
        return _read_status("VmHWM") - _read_status("RssFile", "RssShmem") - self.base


def _train_steps(model, cfg: Config, targets: Targets, device, batch: int, meter: Any) -> dict[str, int]:
    """Two training steps on random data as the trainer runs them (loss, optimizer, mixer, EMA), metered by phase:
    {"backward": the second step's forward/backward peak, "optimizer": the larger optimizer-step peak, "peak": the
    largest of all}. The first step allocates the optimizer state; the second is a steady one."""
    import torch

    from okkhor.engine import autocast
    from okkhor.optim import build_optimizer
    from okkhor.mixing import MixedTargets, Mixer, multihead_loss

    size = cfg.data.image_size
    generator = torch.Generator().manual_seed(batch)
    weights = list(cfg.train.loss_weights) or list(targets.weights)
    mixer = Mixer(cfg.mix, seed=0) if cfg.mix.kind != "none" else None
    peaks: dict[str, int] = {}
    meter.reset()
    x = torch.rand(batch, 1, size, size, generator=generator).to(device)
    if cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in targets.num_classes], 1).to(device)
    optimizer = build_optimizer(model, cfg.train)
    ema = None
    if cfg.train.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema)
    model.train()
    try:
        for step in (1, 2):
            with autocast(device, cfg.train.amp):
                if mixer is not None:
                    logits, mixed = mixer(model, x, y, 0)
                else:
                    logits, mixed = model(x), MixedTargets.unmixed(y)
                loss = multihead_loss(logits, mixed, weights, cfg.train.label_smoothing, cfg.train.ohem)
            loss.backward()
            del logits, mixed, loss
            peaks[f"backward{step}"] = meter.read()
            meter.reset()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            peaks[f"optimizer{step}"] = meter.read()
            meter.reset()
    finally:
        optimizer.zero_grad(set_to_none=True)
    return {"backward": peaks["backward2"], "optimizer": max(peaks["optimizer1"], peaks["optimizer2"]),
            "peak": max(peaks.values())}


def _measure_cuda(model, cfg: Config, targets: Targets, device, batch: int) -> Optional[dict[str, int]]:
    """Peaks of the metered steps in this process (None: out of memory)."""
    from okkhor.oom import free_memory, is_oom

    free_memory(model)
    result = None
    try:
        result = _train_steps(model, cfg, targets, device, batch, _CudaMeter(device))
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are swallowed
        if not is_oom(exc):
            raise
    free_memory(model)
    return result


def _read_status(*keys: str) -> int:
    """Sum of /proc/self/status fields (kB) in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        text = f.read()
    total = 0
    for key in keys:
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if not match:
            raise OkkhorError(f"memory: /proc/self/status has no {key}")
        total += int(match.group(1)) * 1024
    return total


def _measure_cpu_here(cfg: Config, targets: Targets, batch: int) -> dict[str, int]:
    """In a fresh process: the metered steps on a model built here (its weights count in every phase)."""
    import torch

    import okkhor.engine  # noqa: F401 - every import before the baseline: only the model and the steps count
    from okkhor.model import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same memory (no per-thread buffers of note); spinning threads are slow
    gc.collect()
    meter = _RssMeter()
    model = build_model(cfg.model, targets)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return _train_steps(model, cfg, targets, torch.device("cpu"), batch, meter)


class _ForkServer:
    """A Python process that imports torch, timm and okkhor once, then forks one fresh child per measurement.

    The server runs no torch operation itself, so forking it is safe (no thread pools yet) and every child starts
    from the same clean heap; the import cost is paid once instead of once per batch size.
    """

    def __init__(self) -> None:
        # a fixed mmap threshold (glibc's initial 128 KiB; setting it turns off the dynamic raise): every large
        # tensor is mapped and unmapped on its own, so RSS follows the live bytes, as max_memory_allocated does
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        self.stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # a pipe could fill up
        self.proc = subprocess.Popen([sys.executable, "-m", "okkhor.memory"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)

    def measure(self, cfg: Config, targets: Targets, batch: int) -> dict[str, int]:
        request = json.dumps({"config": cfg.to_dict(), "targets": targets.to_dict(), "batch": batch})
        line = ""
        try:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
            if select.select([self.proc.stdout], [], [], CHILD_TIMEOUT_S)[0]:
                line = self.proc.stdout.readline()
        except OSError:
            pass
        result = json.loads(line) if line.startswith("{") else {}
        if "peak" not in result:
            detail = result.get("error")
            if not detail:
                self.proc.kill()
                self.proc.wait()
                self.stderr.seek(0)
                detail = (self.stderr.read().strip().splitlines() or [f"no answer in {CHILD_TIMEOUT_S} s"])[-1]
            raise OkkhorError(f"memory: measuring batch {batch} on cpu failed: {detail}")
        return {k: int(v) for k, v in result.items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=CHILD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def _serve() -> int:
    """The fork server's loop: one JSON request per stdin line, one JSON result per stdout line."""
    import torch  # noqa: F401 - every import before the fork: the children measure only the model and the steps
    import timm.utils  # noqa: F401

    import okkhor.engine  # noqa: F401
    import okkhor.model  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report on the pipe, exit without the server's cleanup
            os.close(read)
            os.dup2(2, 1)  # stray prints must not reach the server's protocol stream
            try:
                request = json.loads(line)
                result = _measure_cpu_here(config_from_dict(request["config"]),
                                           Targets.from_dict(request["targets"]), int(request["batch"]))
            except OkkhorError as exc:
                result = {"error": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            reply = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write((reply or json.dumps({"error": f"the measuring process died (wait status {status})"}))
                         + "\n")
        sys.stdout.flush()
    return 0


Measured = list[tuple[int, dict[str, int]]]


def _measure_here(model: Any, cfg: Config, targets: Targets, device: Any, batches: Sequence[int],
                  progress: Optional[Callable[[int, Optional[int]], None]] = None,
                  measure: Callable[..., Optional[dict[str, int]]] = _measure_cuda) -> tuple[Measured, Optional[int]]:
    """Each batch size in this process, on `model` or on one built from the config; the model's weights, buffers
    and training flag and the RNG states are put back afterwards. Stops at the first batch size that runs out of
    memory and returns it as the second value."""
    import torch

    own = model is None
    if own:
        from okkhor.model import build_model

        torch.manual_seed(0)
        model = build_model(cfg.model, targets)
    model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
    saved = None if own else {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    measured: Measured = []
    failed = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch in batches:
                result = measure(model, cfg, targets, device, batch)
                if progress:
                    progress(batch, None if result is None else result["peak"])
                if result is None:
                    failed = batch
                    break
                measured.append((batch, result))
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        model.train(was_training)
    return measured, failed


def _measure_forked(cfg: Config, targets: Targets, batches: Sequence[int],
                    progress: Optional[Callable[[int, Optional[int]], None]] = None) -> Measured:
    """Each batch size in a fresh process forked from one server (see the module docstring)."""
    measured: Measured = []
    server = _ForkServer()
    try:
        for batch in batches:
            result = server.measure(cfg, targets, batch)
            if progress:
                progress(batch, result["peak"])
            measured.append((batch, result))
    finally:
        server.close()
    return measured


def probe_config(cfg: Config, targets: Targets, device: Any, batches: Optional[Sequence[int]] = None,
                 model: Any = None, progress: Optional[Callable[[int, Optional[int]], None]] = None) -> MemoryFit:
    """Measure the training-step peak of `cfg` at each batch size and fit the line.

    On CUDA the steps run in this process, on `model` when given (its weights, buffers and the RNG state are put
    back afterwards) or on a model built from the config; batch sizes from the first one that runs out of memory
    on are skipped. On CPU each batch size runs in a fresh process (see the module docstring); `model` is unused.
    `progress(batch, peak)` is called after each measurement with the overall peak (None: out of memory).
    """
    import torch

    device = torch.device(device)
    _check_precision(cfg.train.amp, device)
    batches = sorted(set(int(b) for b in (batches or DEFAULT_BATCHES[device.type])))
    if len(batches) < 2 or batches[0] < 1:
        raise OkkhorError(f"memory: need two or more different batch sizes >= 1, got {batches}")
    precision = {v: k for k, v in PRECISIONS.items()}[cfg.train.amp]
    if device.type == "cuda":
        method = "torch.cuda.max_memory_allocated by phase of two training steps"
        measured, failed = _measure_here(model, cfg, targets, device, batches, progress)
    else:
        method = "peak anonymous RSS by phase of two training steps, in a freshly forked process per batch size"
        measured, failed = _measure_forked(cfg, targets, batches, progress), None
    if len(measured) < 2:
        raise OkkhorError(f"memory: {cfg.model.name} at {cfg.data.image_size} px ran out of memory at batch "
                          f"{failed}; probe smaller batch sizes (--batches)")
    fit = MemoryFit.fitted(cfg.model.name, cfg.data.image_size, precision, device.type, method, measured,
                           failed_batch=failed)
    if failed is not None:
        fit.notes.append(f"batch {failed} ran out of memory; larger batch sizes were not probed")
    if fit.per_sample_bytes <= 0:
        fit.notes.append("the forward/backward peak did not grow with the batch size here; probe larger batch "
                         "sizes")
    return fit


def probe_settings(model_name: str, image_size: int, precision: str = "fp32", channels_last: bool = False) -> Config:
    """The config `probe` measures: defaults (AdamW, no mixing, no EMA) with this model, size and precision."""
    if precision not in PRECISIONS:
        raise OkkhorError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if image_size < 16:
        raise OkkhorError(f"image size {image_size}: must be at least 16")
    import timm

    if not timm.is_model(model_name):
        raise OkkhorError(f"model {model_name!r}: not a timm model name")
    return Config(data=DataConfig(image_size=image_size), model=ModelConfig(name=model_name),
                  train=TrainConfig(amp=PRECISIONS[precision], channels_last=channels_last))  # type: ignore[arg-type]


def probe(model_name: str, image_size: int, precision: str = "fp32", device: str = "auto",
          batches: Optional[Sequence[int]] = None, *, channels_last: bool = False,
          targets: Optional[Targets] = None,
          progress: Optional[Callable[[int, Optional[int]], None]] = None) -> MemoryFit:
    """Peak training-step memory of a timm model with the Bengali heads (or `targets`) at a few batch sizes.

    The step is the trainer's: `build_model`, `multihead_loss`, AdamW from `build_optimizer`, autocast for bf16/fp16.
    """
    cfg = probe_settings(model_name, image_size, precision, channels_last)
    dev = _resolve_device(device)
    _check_precision(cfg.train.amp, dev)
    return probe_config(cfg, targets or Targets.from_class_map(), dev, batches, progress=progress)


# ------------------------------------------------------------------------------------------------ train.batch_size: auto

def _model_targets(model: Any) -> Targets:
    """The targets of a GraphemeModel (names and head sizes), through DDP / compile wrappers."""
    from okkhor.mixing import unwrap_model

    inner = unwrap_model(model)
    names, heads = getattr(inner, "target_names", None), getattr(inner, "heads", None)
    if not names or heads is None:
        raise TypeError(f"model must be an okkhor GraphemeModel, got {type(inner).__name__}")
    return Targets.make(names, [head.out_features for head in heads])


def choose_batch(model: Any, cfg: Config, device: Any, *, budget: Optional[int] = None,
                 batches: Optional[Sequence[int]] = None, log: Optional[Callable[[str], None]] = None
                 ) -> tuple[int, int]:
    """(micro-batch, accum) for `train.batch_size: auto`: the largest micro-batch whose predicted training-step
    peak fits the budget (default: free CUDA memory or available RAM, of which HEADROOM is used), rounded to
    reach `train.effective_batch` with micro * accum * processes >= effective_batch.

    `model` is the trainer's GraphemeModel (on CUDA it is probed in place and restored; on CPU a fresh process
    builds its own from `cfg`). With several processes the smallest choice of any process is taken by all.
    """
    import torch

    device = torch.device(device)
    targets = _model_targets(model)
    effective = int(cfg.train.effective_batch)
    if effective < 1:
        raise OkkhorError("train.batch_size=auto needs train.effective_batch >= 1")
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    per_process = math.ceil(effective / world)
    fit = probe_config(cfg, targets, device, batches, model=model)
    source = "--budget"
    if budget is None:
        budget, source = default_budget(device)
    largest = fit.max_batch(budget)
    if world > 1:
        import ignite.distributed as idist

        largest = int(idist.all_reduce(torch.tensor(largest, device=device), op="MIN").item())
    if largest < 1:
        raise OkkhorError(f"train.batch_size=auto: {cfg.model.name} at {cfg.data.image_size} px needs "
                          f"{format_bytes(fit.predict(1))} at batch 1 but the budget is {format_bytes(budget)} "
                          f"({source}, {HEADROOM:.0%} usable)")
    micro, accum = plan_batch(largest, per_process)
    if log is not None:
        log(f"train: batch_size=auto: {format_bytes(fit.fixed_bytes)} + {format_bytes(fit.per_sample_bytes)} per "
            f"sample on {device.type}; {format_bytes(budget)} {source} fits {largest}; micro-batch {micro} x accum "
            f"{accum}{f' x {world} processes' if world > 1 else ''} for effective batch {effective}")
    return micro, accum


if __name__ == "__main__":
    sys.exit(_serve())
