"""Two metered steps of the trainer's own TrainStep on random data, the measurement every memory probe runs."""
from __future__ import annotations

from typing import Any, Callable, Optional

from okkhor.config import Config
from okkhor.targets import Targets
from okkhor.utils.sizes import hw

# (batch, {"backward", "optimizer", "peak"}) per measured batch size; progress(batch, peak or None when out of memory)
Measured = list[tuple[int, dict[str, int]]]
ProgressFn = Optional[Callable[[int, Optional[int]], None]]


def train_steps(model: Any, cfg: Config, targets: Targets, device: Any, batch: int, meter: Any) -> dict[str, int]:
    """Two steps of the trainer's own training step, built as the trainer builds it for `cfg`
    (okkhor.training.setup.build_training: the loss with the mixer, label smoothing and OHEM, precision, clipping,
    the optimizer and schedule, EMA), with out-of-memory errors raised rather than recovered from, metered by
    phase: {"backward": the second step's forward/backward peak, "optimizer": the larger optimizer-step peak,
    "peak": the largest of all}. The first step allocates the optimizer state; the second is a steady one.
    `meter` has reset() and read() -> bytes."""
    import torch

    from okkhor.training.setup import build_training
    from okkhor.training.step import BatchPlan, Precision

    tcfg = cfg.train
    generator = torch.Generator().manual_seed(batch)
    precision = Precision(device, tcfg.amp, tcfg.channels_last)
    classes = list(targets.num_classes)
    graphemes = getattr(model, "grapheme_classes", None)
    if graphemes is not None:  # the auxiliary grapheme head: one more label column, as in training
        classes.append(len(graphemes))
    peaks: dict[str, int] = {}
    meter.reset()
    x = precision.images(torch.rand(batch, 1, *hw(cfg.data.image_size), generator=generator))
    y = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in classes], 1).to(device)
    parts = build_training(model, cfg, targets, precision, BatchPlan(batch), iterations_per_epoch=1,
                           recover_oom=False)
    step = parts.step
    model.train()
    try:
        for n in (1, 2):
            step.micro_step(x, y)
            peaks[f"backward{n}"] = meter.read()
            meter.reset()
            step.optimizer_step()
            peaks[f"optimizer{n}"] = meter.read()
            meter.reset()
    finally:
        parts.optimizer.zero_grad(set_to_none=True)
    return {"backward": peaks["backward2"], "optimizer": max(peaks["optimizer1"], peaks["optimizer2"]),
            "peak": max(peaks.values())}
