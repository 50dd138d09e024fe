"""The trainer's pieces: the training step (accumulation, precision, clipping, EMA), `create_trainer`, and an
evaluator Engine with the hierarchical recall and the loss attached (the training loss is okkhor.training.loss's)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from timm.utils import unwrap_model

from okkhor.errors import OkkhorError
from okkhor.metrics import HierarchicalRecall
from okkhor.targets import Targets
from okkhor.training.loss import TrainLoss
from okkhor.training.mixing import MixedTargets, multihead_loss
from okkhor.training.optim import Schedule


class NonFiniteLoss(OkkhorError):
    """The training loss became NaN or infinite. Found on the device and read at the step's checks (every
    `sync_every` iterations and at the epoch's end), so it is raised before any checkpoint holds the bad weights."""


@dataclass
class BatchPlan:
    """Micro-batch size and accumulation of a running trainer: the one object a handler may change mid-run.

    The training step reads `accum` at the start of every accumulation group; the epoch's batches are cut with
    the `batch_size` that holds when the epoch starts. A trainer exposes its plan as `engine.state.batch_plan`;
    checkpoints store it with the run state and a resumed run continues with the stored values.
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


def check_amp(device: torch.device, amp: str, option: str = "train.amp", off: str = "off") -> None:
    """fp16 autocast needs CUDA: one line naming `option` otherwise."""
    if amp == "fp16" and device.type != "cuda":
        raise OkkhorError(f"{option}=fp16 needs a CUDA device (this run uses {device.type}); "
                          f"use {option}=bf16 or {option}={off}")


@dataclass
class Precision:
    """Where and in what number format a step runs: device, `train.amp` (auto/off/bf16/fp16; auto is resolved
    here by okkhor.utils.devices.choose_amp, with the reason in `amp_reason`), channels_last (auto: on for CUDA), and
    the gradient scaler (enabled for fp16 only)."""

    device: Union[torch.device, str] = "cpu"
    amp: str = "off"
    channels_last: Union[bool, str] = False
    scaler: Optional[torch.amp.GradScaler] = None
    amp_reason: str = "set in the config"

    def __post_init__(self) -> None:
        from okkhor.utils.devices import choose_amp, choose_channels_last

        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        self.device = torch.device(self.device)
        if self.amp == "auto":
            self.amp, self.amp_reason = choose_amp(self.amp, self.device)
        self.channels_last = choose_channels_last(self.channels_last, self.device)
        check_amp(self.device, self.amp)
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    @classmethod
    def for_inference(cls, device: Union[torch.device, str]) -> "Precision":
        """predict / evaluate: bf16 autocast and channels_last on a CUDA device with bf16 tensor cores; plain
        fp32 on CPU, so that CPU probabilities are the fp32 model's whatever the CPU's flags."""
        device = torch.device(device)
        return cls(device, "auto" if device.type == "cuda" else "off", "auto")

    def autocast(self):
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type,
                              dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """A batch from a loader (uint8 [B, 1, H, W], or float already in [0, 1]) -> float on the device: the
        copy is non-blocking (from pinned memory on CUDA) and the scaling to [0, 1] runs on the device."""
        from okkhor.data.dataset import normalize

        if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()
        x = normalize(x.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# runner(micro_step, x, y, iteration) -> loss: runs micro_step(x, y, weight=1.0), or the batch in weighted chunks
Runner = Callable[[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], torch.Tensor, torch.Tensor, int],
                  torch.Tensor]


def run_whole(micro_step, x: torch.Tensor, y: torch.Tensor, iteration: int) -> torch.Tensor:
    """The default runner: the whole micro-batch at once."""
    return micro_step(x, y, 1.0)


class TrainStep:
    """The trainer's process function: one micro-batch forward (through the loss's mixer) and backward.

    The loss of each micro-batch is divided by the length of its accumulation group (`plan.accum` iterations,
    counted in engine iterations) and the optimizer steps when the group is complete. The last group of an epoch
    may be shorter (the epoch's iterations need not divide by accum): it steps anyway at the epoch's last
    iteration, its losses divided by its own length, so every optimizer step follows a mean gradient.

    `loss` is a TrainLoss (or the loss weights alone); `precision` a Precision. After each optimizer step the
    schedule steps, and the EMA (timm ModelEmaV3) follows the unwrapped model. `runner` decides how a micro-batch
    is run: `run_whole`, or e.g. okkhor.training.oom.OomRecovery, which redoes a batch that ran out of memory in chunks.

    No host sync per micro-batch: the output's "loss" stays a device tensor (handlers read it every N
    iterations); finiteness is a flag accumulated on the device and read by `check_finite` at the first optimizer
    step after every `sync_every` iterations and at the epoch's end (with several processes the flag is summed
    over them there, so all stop together, and DDP otherwise communicates only in the optimizer step's backward).
    Whatever saves the weights mid-epoch must call `check_finite()` first.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plan: Any,
                 loss: Union[TrainLoss, Sequence[float]], *, precision: Optional[Precision] = None,
                 scheduler: Optional[Schedule] = None, clip_grad: float = 0.0, ema: Optional[nn.Module] = None,
                 runner: Runner = run_whole, sync_every: int = 50):
        for name in ("batch_size", "accum"):
            if not isinstance(getattr(plan, name, None), int):
                raise TypeError(f"plan must have an int {name} (a BatchPlan), got {type(plan).__name__}")
        if clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0, got {clip_grad}")
        if not callable(runner):
            raise TypeError(f"runner must be callable, got {type(runner).__name__}")
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        import ignite.distributed as idist

        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.loss = loss if isinstance(loss, TrainLoss) else TrainLoss(loss)
        self.precision = precision if precision is not None else Precision()
        self.scheduler, self.clip_grad, self.ema, self.runner = scheduler, clip_grad, ema, runner
        self.world_size = idist.get_world_size()
        self.sync_every = sync_every
        self._bad: Optional[torch.Tensor] = None     # device: any non-finite loss since the last check
        self._bad_loss: Optional[torch.Tensor] = None  # device: the first such loss, and its epoch iteration
        self._bad_at: Optional[torch.Tensor] = None
        self._since_check = 0
        self.optimizer_steps = 0
        self._epoch_iteration = 0
        self._group_len = 1
        self._group_left = 0
        self._epoch = 0
        self._resume_iteration = 0  # a resumed mid-epoch checkpoint: the epoch's iterations already done

    @property
    def epoch_iteration(self) -> int:
        """Iterations done in the current epoch."""
        return self._epoch_iteration

    @property
    def at_step_boundary(self) -> bool:
        """True between accumulation groups: no gradient is pending, so a checkpoint here resumes exactly."""
        return self._group_left == 0

    def attach(self, engine: Engine) -> "TrainStep":
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish_epoch)
        return self

    def _start_epoch(self, engine: Engine) -> None:
        self._epoch_iteration, self._resume_iteration = self._resume_iteration, 0
        self._group_len, self._group_left = 1, 0

    def _finish_epoch(self, engine: Engine) -> None:
        if self._group_left:  # the data ran out before the epoch length said: do not carry gradients over
            self.optimizer_step()
            self._group_left = 0
        self.check_finite()

    def __call__(self, engine: Engine, batch: Any) -> dict[str, float]:
        self.model.train()
        x, y = batch
        x = self.precision.images(x)
        y = y.to(self.precision.device, non_blocking=True)
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
        self._since_check += 1
        if self._group_left == 0:
            if self._since_check >= self.sync_every:
                self.check_finite()
            self.optimizer_step()
        return {"loss": loss, "images": int(x.shape[0]) * self.world_size,
                "lr": float(self.optimizer.param_groups[0]["lr"])}

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Forward, loss (mean over x) and backward of weight * loss / group length; returns the loss (detached,
        on the device). A NaN or infinite loss is noted on the device (see `check_finite`), with no host read."""
        with self.precision.autocast():
            loss = self.loss(self.model, x, y, self._epoch)
        value = loss.detach()
        bad = ~torch.isfinite(value)
        if self._bad is None:
            self._bad, self._bad_loss = torch.zeros_like(bad), torch.zeros_like(value, dtype=torch.float32)
            self._bad_at = torch.zeros((), dtype=torch.int64, device=value.device)
        first = bad & ~self._bad
        self._bad_loss = torch.where(first, value.float(), self._bad_loss)
        self._bad_at = torch.where(first, self._epoch_iteration, self._bad_at)
        self._bad = self._bad | bad
        self.precision.scaler.scale(loss * (weight / self._group_len)).backward()
        return value

    def check_finite(self) -> None:
        """Read the non-finite flag (one host read; summed over processes first): raise NonFiniteLoss when any
        loss since the last check was NaN or infinite."""
        self._since_check = 0
        if self._bad is None:
            return
        flag = self._bad.to(torch.int64)
        if self.world_size > 1:
            import ignite.distributed as idist

            flag = idist.all_reduce(flag.clone())
        if int(flag):
            here = bool(self._bad)
            value, at = (float(self._bad_loss), int(self._bad_at)) if here else (float("nan"), 0)
            where = f"iteration {at} of the epoch" if here else "in another process"
            raise NonFiniteLoss(f"train: the loss became {value} at epoch {self._epoch}, {where}")

    def optimizer_step(self) -> None:
        """Clip (when asked), step the optimizer through the scaler, zero the gradients, step schedule and EMA."""
        scaler = self.precision.scaler
        if self.clip_grad > 0:
            scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.optimizer_steps)
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), step=self.optimizer_steps)

    def state_dict(self) -> dict:
        return {"optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        """The optimizer-step count; `epoch_iteration` (a mid-epoch checkpoint) is where the next epoch starts."""
        self.optimizer_steps = int(state["optimizer_steps"])
        self._resume_iteration = int(state.get("epoch_iteration", 0))


def _quiet(engine: Engine, name: str) -> Engine:
    # errors reach the user through OkkhorError / the CLI; keep ignite from logging them a second time
    engine.logger = logging.getLogger(name)
    engine.logger.addHandler(logging.NullHandler())
    engine.logger.propagate = False
    return engine


def create_trainer(step: TrainStep, *extra: Any) -> Engine:
    """An Engine running `step`, with the step's epoch handlers and those of `extra` objects (e.g. OomRecovery)
    attached, in that order."""
    trainer = _quiet(Engine(step), "okkhor.trainer")
    step.attach(trainer)
    for handler in extra:
        handler.attach(trainer)
    return trainer


def create_evaluator(model: nn.Module, targets: Targets, loss_weights: Sequence[float],
                     precision: Precision) -> Engine:
    """An Engine that runs `model` in eval mode over a loader, with `HierarchicalRecall` (score, recall_<target>)
    and the mean multi-head loss attached; each process passes its own share, metrics are summed across them."""
    from ignite.metrics import Loss

    weights = [float(w) for w in loss_weights]

    @torch.no_grad()
    def step(engine: Engine, batch: Any):
        x, y = batch
        with precision.autocast():
            logits = model(precision.images(x))
        return tuple(out.float() for out in logits), y.to(precision.device, non_blocking=True)

    evaluator = _quiet(Engine(step), "okkhor.evaluator")
    HierarchicalRecall(targets, device=precision.device).attach(evaluator, "recall")
    Loss(lambda logits, y: multihead_loss(logits, MixedTargets.unmixed(y), weights),
         device=precision.device).attach(evaluator, "loss")
    return evaluator


def run_evaluator(evaluator: Engine, model: nn.Module, loader: Any) -> dict[str, float]:
    """Run `evaluator` (from create_evaluator, on `model`) over a whole set: {"loss", "score", "recall_<t>"...}."""
    was_training = model.training
    model.eval()
    try:
        metrics = evaluator.run(loader).metrics
    finally:
        model.train(was_training)
    return {"loss": float(metrics["loss"]), **metrics["recall"]}


def class_counts(labels: np.ndarray, targets: Targets) -> dict[str, list[int]]:
    """{target: number of samples per class} of labels [n, T]."""
    return {name: np.bincount(labels[:, t], minlength=n).astype(int).tolist()
            for t, (name, n) in enumerate(zip(targets.names, targets.num_classes, strict=False))}
