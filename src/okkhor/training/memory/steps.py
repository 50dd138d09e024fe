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
    """Two steps of `okkhor.training.step.TrainStep` as the trainer builds it for `cfg` (loss with mixer, label
    smoothing and OHEM, precision, clipping, the optimizer, EMA), metered by phase: {"backward": the second step's
    forward/backward peak, "optimizer": the larger optimizer-step peak, "peak": the largest of all}. The first step
    allocates the optimizer state; the second is a steady one. `meter` has reset() and read() -> bytes."""
    import torch

    from okkhor.training.mixing import Mixer
    from okkhor.training.optim import build_optimizer
    from okkhor.training.step import BatchPlan, Precision, TrainLoss, TrainStep

    tcfg = cfg.train
    generator = torch.Generator().manual_seed(batch)
    precision = Precision(device, tcfg.amp, tcfg.channels_last)
    mixer = Mixer(cfg.mix, seed=0) if cfg.mix.kind != "none" else None
    classes = list(targets.num_classes)
    weights = list(tcfg.loss_weights) or list(targets.weights)
    graphemes = getattr(model, "grapheme_classes", None)
    if graphemes is not None:  # the auxiliary grapheme head: one more label column and loss term, as in training
        classes.append(len(graphemes))
        weights.append(tcfg.grapheme_loss_weight)
    loss = TrainLoss(weights, tcfg.label_smoothing, tcfg.ohem, mixer)
    peaks: dict[str, int] = {}
    meter.reset()
    x = precision.images(torch.rand(batch, 1, *hw(cfg.data.image_size), generator=generator))
    y = torch.stack([torch.randint(0, n, (batch,), generator=generator) for n in classes], 1).to(device)
    optimizer = build_optimizer(model, tcfg)
    ema = None
    if tcfg.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=tcfg.ema)
    step = TrainStep(model, optimizer, BatchPlan(batch), loss, precision=precision, clip_grad=tcfg.clip_grad, ema=ema)
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
        optimizer.zero_grad(set_to_none=True)
    return {"backward": peaks["backward2"], "optimizer": max(peaks["optimizer1"], peaks["optimizer2"]),
            "peak": max(peaks.values())}
