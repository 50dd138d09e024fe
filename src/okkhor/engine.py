"""The training step (accumulation, AMP, clipping, EMA) and whole-set evaluation."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from okkhor.errors import OkkhorError
from okkhor.metrics import HierarchicalRecall
from okkhor.mixing import MixedTargets, Mixer, multihead_loss
from okkhor.optim import Schedule
from okkhor.targets import Targets


class NonFiniteLoss(OkkhorError):
    """The training loss became NaN or infinite; raised before the bad gradients reach the weights."""


@dataclass
class BatchPlan:
    """Micro-batch size and accumulation of a running trainer: the one object a handler may change mid-run.

    The training step reads `accum` at the start of every accumulation group; the epoch's batches are cut with
    the `batch_size` that holds when the epoch starts. A trainer exposes its plan as `engine.state.batch_plan`;
    checkpoints store it under "batch" and a resumed run continues with the stored values.
    """

    batch_size: int
    accum: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def effective(self, world_size: int = 1) -> int:
        return self.batch_size * self.accum * world_size

    def state_dict(self) -> dict:
        return {"batch_size": self.batch_size, "accum": self.accum}

    def load_state_dict(self, state: dict) -> None:
        self.batch_size, self.accum = int(state["batch_size"]), int(state["accum"])
        self.__post_init__()


def autocast(device: torch.device, amp: str):
    """The autocast context for `train.amp` (off: a no-op)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def check_amp(device: torch.device, amp: str) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise OkkhorError(f"train.amp=fp16 needs a CUDA device (this run uses {device.type}); "
                          "use train.amp=bf16 or train.amp=off")


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# runner(micro_step, x, y, iteration) -> loss: runs micro_step(x, y, weight=1.0), or the batch in weighted chunks
Runner = Callable[[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], torch.Tensor, torch.Tensor, int],
                  torch.Tensor]


def run_whole(micro_step, x: torch.Tensor, y: torch.Tensor, iteration: int) -> torch.Tensor:
    """The default runner: the whole micro-batch at once."""
    return micro_step(x, y, 1.0)


class TrainStep:
    """The trainer's process function: one micro-batch forward (through the mixer) and backward.

    The loss of each micro-batch is divided by the length of its accumulation group (`plan.accum` iterations,
    counted in engine iterations) and the optimizer steps when the group is complete. The last group of an epoch
    may be shorter (the epoch's iterations need not divide by accum): it steps anyway at the epoch's last
    iteration, its losses divided by its own length, so every optimizer step follows a mean gradient.

    `runner` decides how a micro-batch is run: `run_whole`, or e.g. okkhor.oom.OomRecovery, which redoes a batch
    that ran out of memory in weighted chunks through `micro_step(x, y, weight)`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plan: Any,
                 loss_weights: Sequence[float], *, mixer: Optional[Mixer] = None,
                 scheduler: Optional[Schedule] = None,
                 scaler: Optional[torch.amp.GradScaler] = None, amp: str = "off",
                 device: torch.device | str = "cpu", channels_last: bool = False, clip_grad: float = 0.0,
                 ema: Optional[nn.Module] = None, ema_source: Optional[nn.Module] = None,
                 label_smoothing: float = 0.0, ohem: float = 1.0, world_size: int = 1,
                 runner: Runner = run_whole):
        for name in ("batch_size", "accum"):
            if not isinstance(getattr(plan, name, None), int):
                raise TypeError(f"plan must have an int {name} (a BatchPlan), got {type(plan).__name__}")
        if clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {clip_grad}")
        if not callable(runner):
            raise TypeError(f"runner must be callable, got {type(runner).__name__}")
        self.device = torch.device(device)
        check_amp(self.device, amp)
        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.loss_weights = [float(w) for w in loss_weights]
        self.mixer, self.scheduler = mixer, scheduler
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(self.device.type, enabled=False)
        self.amp, self.channels_last, self.clip_grad = amp, channels_last, clip_grad
        self.ema, self.ema_source = ema, ema_source if ema_source is not None else model
        self.label_smoothing, self.ohem, self.world_size = label_smoothing, ohem, world_size
        self.runner = runner
        self.optimizer_steps = 0
        self._epoch_iteration = 0
        self._group_len = 0
        self._group_left = 0
        self._epoch = 0

    def attach(self, engine: Engine) -> "TrainStep":
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish_epoch)
        return self

    def _start_epoch(self, engine: Engine) -> None:
        self._epoch_iteration = 0
        self._group_len = self._group_left = 0

    def _finish_epoch(self, engine: Engine) -> None:
        if self._group_left:  # the data ran out before the epoch length said: do not carry gradients over
            self._optimizer_step()
            self._group_left = 0

    def __call__(self, engine: Engine, batch: Any) -> dict[str, float]:
        self.model.train()
        x, y = batch
        x = to_device(x, self.device, self.channels_last)
        y = y.to(self.device, non_blocking=True)
        self._epoch_iteration += 1
        self._epoch = engine.state.epoch
        if self._group_left == 0:
            remaining = (engine.state.epoch_length or self._epoch_iteration) - self._epoch_iteration + 1
            self._group_len = self._group_left = max(1, min(self.plan.accum, remaining))
        # with DDP, gradients are all-reduced only on the group's last micro-batch
        no_sync = self._group_left > 1 and hasattr(self.model, "no_sync")
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            loss = self.runner(self.micro_step, x, y, engine.state.iteration)
        self._group_left -= 1
        if self._group_left == 0:
            self._optimizer_step()
        return {"loss": float(loss), "images": int(x.shape[0]) * self.world_size,
                "lr": float(self.optimizer.param_groups[0]["lr"])}

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Forward, loss (mean over x) and backward of weight * loss / group length; returns the loss.

        A NaN or infinite loss raises NonFiniteLoss before the backward, so no bad gradient reaches the weights.
        """
        with autocast(self.device, self.amp):
            if self.mixer is not None:
                logits, mixed = self.mixer(self.model, x, y, self._epoch)
            else:
                logits, mixed = self.model(x), MixedTargets.unmixed(y)
            loss = multihead_loss(logits, mixed, self.loss_weights, self.label_smoothing, self.ohem)
        value = self._global_mean(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(f"train: the loss became {value} at epoch {self._epoch}, iteration "
                                f"{self._epoch_iteration} of the epoch")
        self.scaler.scale(loss * (weight / self._group_len)).backward()
        return loss.detach()

    def _global_mean(self, loss: torch.Tensor) -> float:
        """The loss averaged over processes, so that every process sees the same NaN and stops together."""
        if self.world_size > 1:
            import ignite.distributed as idist

            loss = idist.all_reduce(loss.float().clone()) / self.world_size
        return float(loss)

    def _optimizer_step(self) -> None:
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.optimizer_steps)
        if self.ema is not None:
            self.ema.update(self.ema_source, step=self.optimizer_steps)

    def state_dict(self) -> dict:
        return {"optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer_steps = int(state["optimizer_steps"])


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, targets: Targets, loss_weights: Sequence[float],
             device: torch.device, amp: str = "off", channels_last: bool = False) -> dict[str, float]:
    """Loss (mean over every sample) and hierarchical recall over a whole set, summed across processes.

    Each process passes its own disjoint share of the set (no padding), so every sample counts exactly once.
    """
    import ignite.distributed as idist

    was_training = model.training
    model.eval()
    metric = HierarchicalRecall(targets, device=device)
    metric.reset()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        x = to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = tuple(out.float() for out in logits)
        loss_sum += multihead_loss(logits, MixedTargets.unmixed(y), loss_weights).double() * len(y)
        count += len(y)
        metric.update((logits, y))
    loss_sum, count = idist.all_reduce(loss_sum), idist.all_reduce(count)
    if count.item() == 0:
        raise OkkhorError("evaluate: the set is empty")
    result = {"loss": float(loss_sum / count), **metric.compute()}
    model.train(was_training)
    return result


def class_counts(labels: np.ndarray, targets: Targets) -> dict[str, list[int]]:
    """{target: number of samples per class} of labels [n, T]."""
    return {name: np.bincount(labels[:, t], minlength=n).astype(int).tolist()
            for t, (name, n) in enumerate(zip(targets.names, targets.num_classes))}
