"""Training-step memory: measure the peak at a few batch sizes, fit fixed + per-sample bytes, pick a micro-batch.

How the peak is measured:
- CUDA (okkhor.training.memory.cuda): `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, in this
  process. It counts every tensor this process's allocator holds (weights, gradients, optimizer state,
  activations, workspaces), not the CUDA context or allocator slack; the budget check keeps a headroom for those.
- CPU (okkhor.training.memory.server): one fresh process per batch size, forked from a server, metered by its peak
  anonymous RSS (see that module).
Each measurement runs two full steps of the trainer's own TrainStep (forward, the training loss with the mixer,
backward, clipping, optimizer step, EMA; okkhor.training.memory.steps): the first allocates the optimizer state, the
second is a steady step.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional, Sequence

from okkhor.config import Config, DataConfig, ModelConfig, TrainConfig
from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.training.memory.cuda import measure_here
from okkhor.training.memory.fit import HEADROOM, MAX_BATCH, MemoryFit, fit_line, format_bytes, parse_bytes, plan_batch  # noqa: F401
from okkhor.training.memory.steps import ProgressFn
from okkhor.utils.sizes import size_option, size_text, yaml_value

PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}   # --precision -> train.amp
DEFAULT_BATCHES = {"cpu": (2, 4, 8, 16), "cuda": (16, 32, 64, 128)}


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


def probe_config(cfg: Config, targets: Targets, device: Any, batches: Optional[Sequence[int]] = None,
                 model: Any = None, progress: ProgressFn = None) -> MemoryFit:
    """Measure the training-step peak of `cfg` at each batch size and fit the line.

    On CUDA the steps run in this process, on `model` when given (its weights, buffers and the RNG state are put
    back afterwards) or on a model built from the config; batch sizes from the first one that runs out of memory
    on are skipped. On CPU each batch size runs in a fresh process (see the module docstring); `model` is unused.
    `progress(batch, peak)` is called after each measurement with the overall peak (None: out of memory).
    """
    import torch

    from okkhor.training.step import check_amp
    from okkhor.utils.devices import resolve_auto

    device = torch.device(device)
    cfg = resolve_auto(cfg, device)
    check_amp(device, cfg.train.amp, "--precision", "fp32")
    batches = sorted(set(int(b) for b in (batches or DEFAULT_BATCHES[device.type])))
    if len(batches) < 2 or batches[0] < 1:
        raise OkkhorError(f"memory: need two or more different batch sizes >= 1, got {batches}")
    precision = {v: k for k, v in PRECISIONS.items()}[cfg.train.amp]
    if device.type == "cuda":
        method = "torch.cuda.max_memory_allocated by phase of two training steps"
        measured, failed = measure_here(model, cfg, targets, device, batches, progress)
    else:
        from okkhor.training.memory.server import (
            measure_forked,  # not at import: `python -m okkhor.training.memory.server` runs it
        )

        method = "peak anonymous RSS by phase of two training steps, in a freshly forked process per batch size"
        measured, failed = measure_forked(cfg, targets, batches, progress), None
    if len(measured) < 2:
        raise OkkhorError(f"memory: {cfg.model.name} at {size_text(cfg.data.image_size)} px ran out of memory at batch "
                          f"{failed}; probe smaller batch sizes (--batches)")
    fit = MemoryFit.fitted(cfg.model.name, yaml_value(cfg.data.image_size), precision, device.type, method, measured,
                           failed_batch=failed)
    if failed is not None:
        fit.notes.append(f"batch {failed} ran out of memory; larger batch sizes were not probed")
    if fit.per_sample_bytes <= 0:
        fit.notes.append("the forward/backward peak did not grow with the batch size here; probe larger batch "
                         "sizes")
    return fit


def probe_settings(model_name: str, image_size: Any, precision: str = "fp32", channels_last: bool = False) -> Config:
    """The config `probe` measures: defaults (AdamW, no mixing, no EMA) with this model, size (a side or (H, W),
    "64x112") and precision."""
    if precision not in PRECISIONS:
        raise OkkhorError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    image_size = yaml_value(size_option(image_size, "image size"))
    import timm

    if not timm.is_model(model_name):
        raise OkkhorError(f"model {model_name!r}: not a timm model name")
    return Config(data=DataConfig(image_size=image_size), model=ModelConfig(name=model_name),
                  train=TrainConfig(amp=PRECISIONS[precision], channels_last=channels_last))  # type: ignore[arg-type]


def probe(model_name: str, image_size: Any, precision: str = "fp32", device: str = "auto",
          batches: Optional[Sequence[int]] = None, *, channels_last: bool = False,
          targets: Optional[Targets] = None,
          progress: ProgressFn = None) -> MemoryFit:
    """Peak training-step memory of a timm model with the Bengali heads (or `targets`) at a few batch sizes, through
    the trainer's own TrainStep (build_model, the loss, AdamW, autocast for bf16/fp16)."""
    from okkhor.training.distributed import resolve_device

    cfg = probe_settings(model_name, image_size, precision, channels_last)
    dev = resolve_device(device, key="--device")
    return probe_config(cfg, targets or Targets.from_class_map(), dev, batches, progress=progress)


# ---------------------------------------------------------------------------------------------- train.batch_size: auto

def _model_targets(model: Any) -> Targets:
    """The targets of a GraphemeModel (names and head sizes), through DDP / compile wrappers."""
    from timm.utils import unwrap_model

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
        raise OkkhorError(f"train.batch_size=auto: {cfg.model.name} at {size_text(cfg.data.image_size)} px needs "
                          f"{format_bytes(fit.predict(1))} at batch 1 but the budget is {format_bytes(budget)} "
                          f"({source}, {HEADROOM:.0%} usable)")
    micro, accum = plan_batch(largest, per_process)
    if log is not None:
        log(f"train: batch_size=auto: {format_bytes(fit.fixed_bytes)} + {format_bytes(fit.per_sample_bytes)} per "
            f"sample on {device.type}; {format_bytes(budget)} {source} fits {largest}; micro-batch {micro} x accum "
            f"{accum}{f' x {world} processes' if world > 1 else ''} for effective batch {effective}")
    return micro, accum
