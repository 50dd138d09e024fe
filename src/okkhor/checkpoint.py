"""Training checkpoints: everything an exact resume needs, written to a temporary file and renamed."""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okkhor.fsutil import atomic_path
from okkhor.model import load_checkpoint

# what every checkpoint written by `okkhor train` holds (see save_checkpoint)
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "trainer", "mixer", "rng", "config",
                   "targets", "best_score", "early_stopping", "train_class_counts", "batch", "metrics", "finished",
                   "stop_reason")


def rng_state() -> dict[str, Any]:
    """The global random states: python, numpy, torch CPU and (where present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save `state` to a temporary file beside `path`, then rename it onto `path`."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file atomically (best.pt from last.pt without serialising again)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint for resuming; one clear error when it is missing, broken or lacks resume state."""
    from okkhor.errors import OkkhorError

    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise OkkhorError(f"{path}: cannot resume from this checkpoint (no {', '.join(missing)})")
    return ckpt
