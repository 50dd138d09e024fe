"""Training checkpoints through ignite: last.pt, best.pt and the top N written, every stateful object resumed."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from okkhor.errors import OkkhorError
from okkhor.io import checkpoint as ckpt_format
from okkhor.io.checkpoint import load_for_resume as load_training_checkpoint  # noqa: F401 - its old name, kept for callers
from okkhor.training.adapters import checkpoint_items, set_checkpoint_items

# ignite's `Checkpoint` with an atomic saver writes last.pt every epoch (and mid-epoch: on SIGTERM/SIGINT and every
# train.checkpoint_every iterations) and best.pt when the valid score improves; `Checkpoint.load_objects` resumes,
# mid-epoch too. The file format (keys, save, load) is okkhor.io.checkpoint's.


def rng_state() -> dict[str, Any]:
    """The global random states as plain values: python, numpy, torch CPU and (where used) every CUDA device."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][:torch.cuda.device_count()])


class GlobalRng:
    """The global random generators as a checkpointed object."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


class PerProcess:
    """Every process's state of `obj` (rank order), gathered when saved; each process loads its own (rank 0's when
    the number of processes changed)."""

    def __init__(self, obj: Any):
        self.obj = obj

    def state_dict(self) -> dict:
        import ignite.distributed as idist

        mine = self.obj.state_dict()
        return {"ranks": [mine] if idist.get_world_size() == 1 else list(idist.all_gather(mine))}

    def load_state_dict(self, state: dict) -> None:
        import ignite.distributed as idist

        ranks = state["ranks"]
        self.obj.load_state_dict(ranks[idist.get_rank()] if len(ranks) == idist.get_world_size() else ranks[0])


class Fixed:
    """A value stored as is (the config, the targets); loading leaves it alone."""

    def __init__(self, value: Any):
        self.value = value

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:
        pass


class TrainerState:
    """The trainer Engine's position and the step's optimizer-step count.

    `epoch` counts the finished epochs; a mid-epoch checkpoint (saved at ITERATION_COMPLETED, between optimizer
    steps) adds `epoch_iteration`, the iterations done of the next one. Loading puts the engine there with the
    current epoch length and `max_epochs` (the batch plan, and so the epoch length, may change between epochs;
    train.epochs on resume); `batches` (the epoch's batch sampler) then leaves out the iterations already done.
    """

    def __init__(self, trainer: Engine, step: Any, epoch_length: Callable[[], int], max_epochs: int,
                 batches: Any = None, world_size: int = 1):
        self.trainer, self.step, self.epoch_length, self.max_epochs = trainer, step, epoch_length, max_epochs
        self.batches, self.world_size = batches, world_size

    def state_dict(self) -> dict:
        s = self.trainer.state
        mid = self.trainer.last_event_name == Events.ITERATION_COMPLETED
        return {"epoch": s.epoch - 1 if mid else s.epoch, "epoch_iteration": self.step.epoch_iteration if mid else 0,
                "iteration": s.iteration, "epoch_length": s.epoch_length, "world_size": self.world_size,
                **self.step.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step.load_state_dict(state)
        epoch, within, length = int(state["epoch"]), int(state.get("epoch_iteration", 0)), self.epoch_length()
        if within:
            self.trainer.load_state_dict({"iteration": epoch * length + within, "max_epochs": self.max_epochs,
                                          "epoch_length": length})
            if self.batches is not None:
                self.batches.resume_at(epoch + 1, within)
        else:
            self.trainer.load_state_dict({"epoch": epoch, "max_epochs": self.max_epochs, "epoch_length": length})


class _AtomicSaver(DiskSaver):
    """A DiskSaver writing through okkhor.io.checkpoint.save on rank 0: a temporary file renamed over the old one,
    and a failed write (a full disk) keeps the old one and becomes one WriteError line."""

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if self.save_on_rank == _rank():
            ckpt_format.save(self.dirname / filename, checkpoint)


class _FixedNameSaver(_AtomicSaver):
    """An _AtomicSaver for files with fixed names (last.pt, best.pt): the next save replaces the file in one rename,
    so the old one is never removed first (ignite removes a same-named file before saving it again)."""

    def remove(self, filename: str) -> None:
        pass


class _Kept:
    """The list of top-N checkpoints an ignite Checkpoint keeps, as a checkpointed object (restored on resume)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint

    def state_dict(self) -> dict:
        return {"saved": [[priority, name] for priority, name in checkpoint_items(self.checkpoint)]}

    def load_state_dict(self, state: dict) -> None:
        set_checkpoint_items(self.checkpoint, [tuple(item) for item in state["saved"]])


TOP_PATTERN = "top-epoch{global_step}-score{score}.{ext}"   # ignite writes the score with 4 decimals


def _rank() -> int:
    import ignite.distributed as idist

    return idist.get_rank()


def remove_stale_temps(dirname: Path) -> list[Path]:
    """The temporary files a killed save left in a checkpoints folder (atomic_path's `.last.*.tmp.pt`), removed."""
    stale = sorted(Path(dirname).glob(".*.tmp.pt")) if Path(dirname).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunCheckpoints:
    """last.pt (every epoch) and best.pt (when `score_function` improves) of `to_save` in DIRNAME, through ignite's
    Checkpoint; `to_save` holds the stateful objects to resume (`to_load`) and the META_KEYS values.

    keep_top N > 1 also keeps the N best epochs as top-epoch<E>-score<S>.pt (ignite's n_saved removes the rest).
    """

    def __init__(self, dirname: Path, to_load: Mapping[str, Any], meta: Mapping[str, Any],
                 score_function: Callable[[Engine], float], keep_top: int = 1):
        missing = [k for k in ckpt_format.META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
        self.dirname, self.to_load = Path(dirname), dict(to_load)
        self.top = None
        if keep_top > 1:
            self.top = Checkpoint({}, _AtomicSaver(str(dirname), atomic=True, create_dir=True, require_empty=False),
                                  filename_pattern=TOP_PATTERN, score_function=score_function, n_saved=keep_top,
                                  global_step_transform=lambda engine, event: engine.state.epoch)
            self.to_load[ckpt_format.TOP] = _Kept(self.top)
        to_save = {**self.to_load, **{k: Fixed(v) for k, v in meta.items()}}
        if self.top is not None:
            self.top.to_save = to_save
        saver = _FixedNameSaver(str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.best = Checkpoint(to_save, saver, filename_pattern="best.{ext}", score_function=score_function,
                               n_saved=1)
        # the priority of last.pt is the iteration, which grows with every save, mid-epoch ones too
        self.last = Checkpoint(to_save, saver, filename_pattern="last.{ext}", n_saved=1,
                               global_step_transform=lambda engine, event: engine.state.iteration)

    @property
    def last_path(self) -> Path:
        return self.dirname / "last.pt"

    def __call__(self, trainer: Engine) -> None:
        """Save best.pt when the score improved, then last.pt (which then records the new best)."""
        self.best(trainer)
        if self.top is not None:
            self.top(trainer)
        self.last(trainer)

    def save_last(self, trainer: Engine) -> Path:
        """last.pt now (mid-epoch when called at ITERATION_COMPLETED, between optimizer steps)."""
        self.last(trainer)
        return self.last_path

    def resume(self, ckpt: Mapping[str, Any], best_score: Any = None) -> None:
        """Load every stateful object from `ckpt` (Checkpoint.load_objects); tell best.pt's checkpointer the score
        to beat."""
        missing = [k for k in self.to_load if k not in ckpt and k not in ckpt_format.OPTIONAL_STATE]
        if missing:
            raise OkkhorError(f"{self.last_path}: cannot resume from this checkpoint (no {', '.join(missing)}; "
                              "written by another okkhor version?)")
        Checkpoint.load_objects(to_load={k: v for k, v in self.to_load.items() if k in ckpt}, checkpoint=dict(ckpt))
        if best_score is not None:
            set_checkpoint_items(self.best, [(best_score, "best.pt")])


def run_objects(*, net: Any, ema: Any, optimizer: Any, schedule: Any, scaler: Any, mixer: Any, trainer: Any,
                state: Any, early_stopping: Any, meter: Any, swa: Any = None) -> dict[str, Any]:
    """Every stateful object of a run under its checkpoint key (okkhor.io.checkpoint), in load order (the global
    random states last, then SWA): with the meta record, a checkpoint's contents. None: not in this run. `ema` is
    the EMA's module; `mixer` is this process's (all processes' are saved); `trainer` a TrainerState."""
    objects = {ckpt_format.MODEL: net, ckpt_format.EMA: ema, ckpt_format.OPTIMIZER: optimizer,
               ckpt_format.SCHEDULER: schedule, ckpt_format.SCALER: scaler, ckpt_format.MIXER: PerProcess(mixer),
               ckpt_format.TRAINER: trainer, ckpt_format.RUN: state, ckpt_format.EARLY_STOPPING: early_stopping,
               ckpt_format.METER: meter, ckpt_format.RNG: PerProcess(GlobalRng()), ckpt_format.SWA: swa}
    return {key: obj for key, obj in objects.items() if obj is not None}
