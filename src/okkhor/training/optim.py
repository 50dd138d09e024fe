"""Optimizers by timm name (`timm.optim.create_optimizer_v2`) and lr schedules from timm.scheduler and torch,
stepped once per optimizer step (plateau: once per epoch on the valid score)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from timm.optim import create_optimizer_v2

from okkhor.config import TrainConfig
from okkhor.errors import OkkhorError
from okkhor.options import OPTIMIZERS, SCHEDULES


# every optimizer timm's factory builds (adamw, adam, sgd, lamb, lion, ...); weight decay skips biases and norms
def build_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """`train.optimizer` through timm, with train.lr, train.weight_decay (not on 1-d parameters) and train.momentum
    (for the optimizers that take one; timm's `sgd` is Nesterov SGD, `momentum` the classical one)."""
    OPTIMIZERS.check(tcfg.optimizer)
    try:
        return create_optimizer_v2(model, opt=tcfg.optimizer, lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                   momentum=tcfg.momentum)
    except (ImportError, ValueError, AssertionError) as exc:  # e.g. a bitsandbytes optimizer without the package
        raise OkkhorError(f"train.optimizer={tcfg.optimizer}: {str(exc).splitlines()[0]}") from None


def steps_per_epoch(iterations: int, accum: int) -> int:
    """Optimizer steps in an epoch of `iterations` micro-batches: a short last group still steps."""
    return math.ceil(iterations / accum)


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: `build(optimizer, tcfg, total_steps, steps_per_epoch, warmup_steps)` gives the library
    scheduler; `stepping` says how it advances; `fixed_length` whether it is laid out over train.epochs."""

    build: Callable[..., Any]
    stepping: str          # "step": torch .step() per optimizer step; "update": timm .step_update(n); "epoch": plateau
    fixed_length: bool


def _warmup(tcfg: TrainConfig, warmup: int) -> dict[str, Any]:
    # linear from lr / (warmup + 1) to lr over `warmup` steps, then the schedule proper (timm's warmup_prefix)
    return {"warmup_t": warmup, "warmup_lr_init": tcfg.lr / (warmup + 1), "warmup_prefix": True, "t_in_epochs": False}


def _onecycle(optimizer, tcfg, total, per_epoch, warmup):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=tcfg.lr, total_steps=total)


def _cosine(optimizer, tcfg, total, per_epoch, warmup):
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=0.0, **_warmup(tcfg, warmup))


def _poly(optimizer, tcfg, total, per_epoch, warmup):
    from timm.scheduler import PolyLRScheduler

    return PolyLRScheduler(optimizer, t_initial=max(1, total - warmup), power=tcfg.poly_power, lr_min=0.0,
                           **_warmup(tcfg, warmup))


def _step(optimizer, tcfg, total, per_epoch, warmup):
    from timm.scheduler import StepLRScheduler

    return StepLRScheduler(optimizer, decay_t=max(1, round(tcfg.decay_epochs * per_epoch)),
                           decay_rate=tcfg.decay_rate, **_warmup(tcfg, warmup))


def _plateau(optimizer, tcfg, total, per_epoch, warmup):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=tcfg.decay_rate,
                                                      patience=max(0, round(tcfg.decay_epochs)))


def _constant(optimizer, tcfg, total, per_epoch, warmup):
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


# train.schedule (okkhor.options.SCHEDULES) -> spec
SCHEDULE_SPECS = {
    "onecycle": ScheduleSpec(_onecycle, "step", True),      # torch OneCycleLR (cos anneal, momentum cycling)
    "cosine": ScheduleSpec(_cosine, "update", True),        # timm CosineLRScheduler to 0 at the run's end
    "poly": ScheduleSpec(_poly, "update", True),            # timm PolyLRScheduler (train.poly_power)
    "step": ScheduleSpec(_step, "update", False),           # timm StepLRScheduler: x decay_rate every decay_epochs
    "plateau": ScheduleSpec(_plateau, "epoch", False),      # torch ReduceLROnPlateau on the valid score
    "constant": ScheduleSpec(_constant, "step", False),     # torch ConstantLR(factor=1)
}
assert set(SCHEDULE_SPECS) == set(SCHEDULES), "okkhor.options.SCHEDULES and the specs disagree"


class Schedule:
    """A library lr scheduler behind one interface: `step_update(optimizer_steps)` after every optimizer step and
    `step_epoch(score)` after every evaluated epoch. state_dict is the library scheduler's own (plain numbers)."""

    def __init__(self, name: str, scheduler: Any, stepping: str):
        if stepping not in ("step", "update", "epoch"):
            raise ValueError(f"stepping must be step, update or epoch, got {stepping!r}")
        self.name, self.scheduler, self.stepping = name, scheduler, stepping

    def step_update(self, optimizer_steps: int) -> None:
        if self.stepping == "update":
            self.scheduler.step_update(num_updates=optimizer_steps)
        elif self.stepping == "step":
            # OneCycleLR's last point is step total_steps - 1, where the run's last optimizer step happens
            end = getattr(self.scheduler, "total_steps", None)
            if end is None or self.scheduler.last_epoch < end - 1:
                self.scheduler.step()

    def step_epoch(self, score: Optional[float]) -> None:
        if self.stepping == "epoch" and score is not None:
            self.scheduler.step(score)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainConfig, iterations_per_epoch: int,
                    accum: int) -> Schedule:
    """`train.schedule` over train.epochs * ceil(iterations per epoch / accum) optimizer steps."""
    SCHEDULES.check(tcfg.schedule)
    spec = SCHEDULE_SPECS[tcfg.schedule]
    per_epoch = steps_per_epoch(iterations_per_epoch, accum)
    total = max(1, tcfg.epochs * per_epoch)
    warmup = round(tcfg.warmup_epochs * per_epoch)
    return Schedule(tcfg.schedule, spec.build(optimizer, tcfg, total, per_epoch, warmup), spec.stepping)
