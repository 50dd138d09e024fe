"""The checkpoint file format: its keys, atomic save, safe load, "finished", inference weights, the data record."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from okkhor.errors import OkkhorError
from okkhor.utils.files import atomic_path

# A checkpoint is a dict of plain values (tensors, dicts, lists, numbers, strings), read with
# torch.load(weights_only=True). What inference reads, without building a trainer:
CONFIG = "config"                    # Config.to_dict() of the run, its targets and loss weights resolved
TARGETS = "targets"                  # Targets.to_dict(): names, class counts, metric weights
CLASS_COUNTS = "train_class_counts"  # {target: samples per class of the training fold} (prior correction)
DATA = "data"                        # the data record (`data_record`): what the run read, and where
MODEL = "model"                      # the trained weights (state_dict)
EMA = "ema"                          # the EMA weights (state_dict), or None when the run kept none
# What a resume reads besides: the state_dict of every stateful object of the run, under these keys
OPTIMIZER, SCHEDULER, SCALER, MIXER = "optimizer", "scheduler", "scaler", "mixer"
TRAINER, RUN, EARLY_STOPPING, METER, RNG = "trainer", "run", "early_stopping", "meter", "rng"
SWA, TOP = "swa", "top"              # train.swa_epochs: the running average; train.keep_top: the kept files
# What an averaged checkpoint (okkhor average, swa.pt) adds
AVERAGED_FROM, BN_DATA = "averaged_from", "bn_data"

META_KEYS = (CONFIG, TARGETS, CLASS_COUNTS)   # in every checkpoint okkhor writes
INFERENCE_KEYS = (CONFIG, TARGETS, MODEL)     # what predict, evaluate, export, average and --init need
RESUME_KEYS = (*META_KEYS, RUN, TRAINER)      # what a resume needs before it builds anything
OPTIONAL_STATE = (METER,)                     # stateful objects an earlier okkhor did not save (started afresh)
WEIGHT_KEYS = (MODEL, EMA, OPTIMIZER, SCHEDULER, SCALER)  # the heavy entries `meta` leaves out
FINISHED = ("completed", "early_stopping")    # run stop reasons of a run that has ended


# ---------------------------------------------------------------------------------------------- save and load

def save(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> Path:
    """Write `ckpt` to PATH atomically (a temporary file renamed over it): a failed write (a full disk) keeps any
    previous file and is one WriteError line naming PATH."""
    path = Path(path)
    # through a Python file: a failed write is an OSError (ENOSPC) that atomic_path turns into one line
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(dict(ckpt), f)
    return path


def _numpy_globals() -> list:
    """What numpy arrays and scalars need to be unpickled (the RNG state of older checkpoints), under the names
    numpy 1 and numpy 2 write; building an array or a scalar of a dtype runs no user code."""
    import numpy as np

    # the functions pickles name: numpy 2 moved numpy.core to numpy._core (the pickles keep either name)
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(c)) for c in "?bhilqBHILQefdg"]
    out: list = [np.ndarray, np.dtype, *dtypes]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core, name)
        out += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return out


def _refused(path: Path, exc: Exception, what: str = "checkpoint") -> OkkhorError | None:
    """The error for a file that torch.load(weights_only=True) refuses to unpickle; None when it is not that."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if not found and "allowlist" not in str(exc):
        return None
    why = f"it asks for {found.group(1)}" if found else "it holds objects other than tensors and plain data"
    return OkkhorError(f"{path}: refused: {why}; okkhor loads {what}s with torch.load(weights_only=True), "
                       f"which runs no code from the file, so this is not an okkhor {what} or it was "
                       f"altered")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu",
         what: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint file without running code from it (torch.load(weights_only=True), numpy arrays allowed);
    a missing, truncated, foreign or code-carrying file is one clear error naming it (and `what` it should be: the
    stylizer's file is read here too)."""
    path = Path(path)
    if path.is_dir():
        raise OkkhorError(f"{path}: is a folder, not a {what} file")
    if not path.is_file():
        raise OkkhorError(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # e.g. torch's note on the pickle protocol of a foreign file
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise OkkhorError(f"{path}: cannot read: {os.strerror(exc.errno) if exc.errno else exc}") from None
    except Exception as exc:
        refused = _refused(path, exc, what)
        if refused is not None:
            raise refused from None
        hint = "truncated, corrupted or not a torch file" if path.stat().st_size else "an empty file"
        raise OkkhorError(f"{path}: not a readable {what} ({hint}: {exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict):
        raise OkkhorError(f"{path}: not an okkhor {what} (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def require(ckpt: Mapping[str, Any], keys: Iterable[str], where: Any) -> None:
    """One error naming `where` (the file, or e.g. "--init FILE") and the first key `ckpt` lacks."""
    for key in keys:
        if key not in ckpt:
            raise OkkhorError(f"{where}: not an okkhor checkpoint (no '{key}')")


def load_for_resume(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint to resume from; one clear error when it is missing, broken or lacks the run state."""
    ckpt = load(path, map_location="cpu")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise OkkhorError(f"{path}: cannot resume from this checkpoint (no {', '.join(missing)})")
    return ckpt


# ---------------------------------------------------------------------------------------------- what it says

def inference_weights(ckpt: Mapping[str, Any], where: Any) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights when the run kept them, else the trained ones; one error
    naming `where` when they are not a dict of tensors."""
    weights = ckpt.get(EMA) or ckpt[MODEL]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise OkkhorError(f"{where}: not an okkhor checkpoint (its weights are not a dict of tensors)")
    return weights


def has_ema(ckpt: Mapping[str, Any]) -> bool:
    """Whether `inference_weights` are the EMA weights."""
    return bool(ckpt.get(EMA))


def model_name(ckpt: Mapping[str, Any]) -> str | None:
    """The timm model name the checkpoint's config names (None when it names none)."""
    return (ckpt[CONFIG].get("model") or {}).get("name")


def meta(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint without its weights and optimizer state (config, targets, class counts, run state...)."""
    return {k: v for k, v in ckpt.items() if k not in WEIGHT_KEYS}


def meta_record(config: dict, targets: dict, class_counts: dict, data: dict) -> dict[str, Any]:
    """What every training checkpoint holds besides its stateful objects (config, targets, class counts, data)."""
    return {CONFIG: config, TARGETS: targets, CLASS_COUNTS: class_counts, DATA: data}


def averaged(meta_values: Mapping[str, Any], weights: Mapping[str, torch.Tensor], averaged_from: list[str],
             bn_data: str | None = None) -> dict[str, Any]:
    """An averaged checkpoint (okkhor average, swa.pt): `meta_values`, the averaged `model` weights, where they
    came from, and (okkhor average) the data dir whose images recomputed batch norm ("" when none did)."""
    ckpt = {**meta_values, MODEL: dict(weights), AVERAGED_FROM: list(averaged_from)}
    if bn_data is not None:
        ckpt[BN_DATA] = bn_data
    return ckpt


def data_record(fingerprint: Mapping[str, str], data_dir: str | os.PathLike,
                sources: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The data record a run writes: its folds and cache fingerprints ({"folds", "cache"}: resume and evaluate
    refuse other ones) and `dir`, the data directory it read (where the report finds its images).

    A run of several sources gives `sources`, one {name, dir, share, folds, cache} each, in order, recorded under
    "sources"; the top-level fields are then the first source's (what readers of one data dir find).
    """
    record: dict[str, Any] = {**fingerprint, "dir": str(Path(data_dir).resolve())}
    listed = [{**s, "dir": str(Path(s["dir"]).resolve())} for s in sources]
    if listed:
        record["sources"] = listed
    return record


def data_dir(ckpt: Mapping[str, Any] | None) -> Path | None:
    """The data directory the checkpoint's run read, its first with several sources (None when it does not say:
    an older or averaged one)."""
    record = (ckpt or {}).get(DATA) or {}
    return Path(record["dir"]) if isinstance(record, dict) and record.get("dir") else None


def source_records(ckpt: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The data sources the checkpoint's run read, in order: {name, dir, share, folds, cache} each (a run of one
    data dir: that dir, named by its folder); [] when the checkpoint does not say."""
    record = (ckpt or {}).get(DATA) or {}
    if not isinstance(record, dict) or not (record.get("sources") or record.get("dir")):
        return []
    if record.get("sources"):
        return [dict(s) for s in record["sources"]]
    return [{"name": Path(record["dir"]).name, "dir": record["dir"], "share": 0.0,
             **{k: record[k] for k in ("folds", "cache") if k in record}}]


def finished_epochs(ckpt: Mapping[str, Any]) -> int:
    """The epochs a training checkpoint has finished."""
    return int(ckpt[TRAINER]["epoch"])


def stop_reason(ckpt: Mapping[str, Any]) -> str:
    """Why the run stopped at this checkpoint: running, stop_after, completed or early_stopping."""
    return str(ckpt[RUN]["stop_reason"])


def is_finished(ckpt: Mapping[str, Any], epochs: int) -> bool:
    """Whether a run of `epochs` epochs has nothing left to do at this checkpoint: it stopped early, or it
    finished that many epochs (a run may go on with more, on a schedule not laid out over train.epochs)."""
    return stop_reason(ckpt) == "early_stopping" or finished_epochs(ckpt) >= epochs


def epoch_iteration(ckpt: Mapping[str, Any]) -> int:
    """The iterations of the next epoch a mid-epoch checkpoint has done (0 at an epoch's end)."""
    return int(ckpt[TRAINER].get("epoch_iteration", 0))


def world_size(ckpt: Mapping[str, Any]) -> int:
    """The number of processes that trained the run (from the per-process random states when not recorded)."""
    return int(ckpt[TRAINER].get("world_size", len(ckpt.get(RNG, {}).get("ranks", [0]))))


def run_record(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The run state (okkhor.training.handlers.RunState.state_dict): best_score, best_epoch, stop_reason, finished,
    batch (the batch plan), metrics (the last epoch's results)."""
    return dict(ckpt[RUN])


def best_epoch(ckpt: Mapping[str, Any]) -> int | None:
    """The epoch of the best valid score so far (None in a checkpoint without the run state: an averaged one)."""
    value = (ckpt.get(RUN) or {}).get("best_epoch")
    return None if value is None else int(value)
