"""The trainer's private test API: fault injection and early stops that are no part of the config or of `train()`."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite.engine import Events

from okkhor.config import Config
from okkhor.training.train import Run, run_training

# Tests reach the trainer's internals only through this module:
#   train(..., stop_after=N)   stop after epoch N as if interrupted (stop_reason "stop_after"); resume goes on
#   train(..., oom_at=N)       raise an injected out-of-memory error at iteration N (OOM recovery then splits it)
#   train(..., signal_at=N)    send this process SIGTERM after iteration N, as a preemption would
#   FaultInjector(at)          the out-of-memory injector, for an OomRecovery of one's own


class FaultInjector:
    """Raises torch.OutOfMemoryError once, when called with iteration `at` (the engine's 1-based iteration).

    `at=-1` never raises. As an OomRecovery's `injector` the error comes before the micro-batch's forward, exactly
    where a real one would leave the gradients untouched.
    """

    def __init__(self, at: int = -1):
        if isinstance(at, bool) or not isinstance(at, int):
            raise TypeError(f"at must be an int, got {type(at).__name__}")
        if at == 0 or at < -1:
            raise ValueError(f"at must be -1 (off) or an iteration >= 1, got {at}")
        self.at = at
        self.fired = False

    def __call__(self, iteration: int) -> None:
        if iteration == self.at and not self.fired:
            self.fired = True
            import torch

            raise torch.OutOfMemoryError(f"out of memory (injected at iteration {self.at})")


@dataclass
class Hooks:
    """The test controls of one run, applied to the wired run before it starts (`run_training`'s `extend`)."""

    stop_after: int = 0    # stop after this epoch as if interrupted (0: run all train.epochs)
    oom_at: int = -1       # raise an injected out-of-memory error at this iteration (-1: never)
    signal_at: int = 0     # send this process SIGTERM after this iteration (0: never)

    def __call__(self, run: Run) -> None:
        run.state.stop_after = self.stop_after
        if self.oom_at != -1 and run.parts.oom is not None:
            run.parts.oom.injector = FaultInjector(self.oom_at)
        if self.signal_at:
            run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=self.signal_at),
                                          lambda engine: os.kill(os.getpid(), signal.SIGTERM))


def train(data_dir: str | Path, out_dir: str | Path, cfg: Config, resume: bool = False, *, stop_after: int = 0,
          oom_at: int = -1, signal_at: int = 0, **kwargs: Any) -> dict:
    """okkhor.training.train.train (same arguments) with the Hooks above."""
    return run_training(data_dir, out_dir, cfg, resume, extend=Hooks(stop_after, oom_at, signal_at), **kwargs)
