"""Resuming a run from its last.pt: what may change since, the checks, and where the run starts again."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from okkhor.config import Config
from okkhor.data.folds import check_same_data
from okkhor.data.sets import Source, SourcePart
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.targets import Targets
from okkhor.training.optim import SCHEDULE_SPECS
from okkhor.training.tracking import flatten

# config keys a resumed run may change; everything else must match the checkpoint
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.device", "train.compile", "train.checkpoint_every",
                  "data.workers", "data.persistent_workers", "data.prefetch_factor", "eval.batch_size", "log.wandb",
                  "log.mlflow")
# the batch plan: the sample order, the epoch length and the schedule's steps follow it, so a resume keeps it
PLAN_KEYS = ("train.batch_size", "train.accum", "train.effective_batch")
# compared with the checkpoint's data record instead, by check_resume_sources (dirs may move; names, shares and
# fingerprints may not change)
SOURCE_KEYS = ("data.sources",)
RESUME_USE = "resume on the data it was trained on, or start a new run"


def check_start(out_dir: Path, resume: bool, init: Optional[Path]) -> None:
    """--resume continues the run in OUT, --init starts a new one: one line when OUT does not fit the choice."""
    last = out_dir / "checkpoints" / "last.pt"
    if resume and init is not None:
        raise OkkhorError("--init and --resume exclude each other (a resumed run continues from its last.pt)")
    if not resume and last.is_file():
        raise OkkhorError(f"{out_dir}: already holds a run ({last}); pass --resume to continue it "
                          "or choose another --out")


def open_last(out_dir: Path, data_dir: Path, resume: bool, log: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The checkpoint a run continues from (OUT/checkpoints/last.pt with --resume), or None for a new run.

    --resume on a run dir without a checkpoint yet (a run killed in its first epoch, or one not started) starts
    the run from the beginning, so a job script can always pass --resume.
    """
    last = out_dir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        if not data_dir.is_dir():  # before the line below: a bad --data stays one error line
            raise OkkhorError(f"{data_dir}: data directory not found")
        log(f"train: --resume: {out_dir} holds no checkpoint yet; starting from the beginning")
        return None
    return checkpoint.load_for_resume(last) if resume else None


def resumed_precision(cfg: Config, ckpt: Optional[dict]) -> tuple[str, Any]:
    """(train.amp, train.channels_last) of a run: an `auto` of a resumed run is what the run chose (resolved in
    its stored config)."""
    amp, channels_last = cfg.train.amp, cfg.train.channels_last
    if ckpt is not None:
        saved = ckpt[checkpoint.CONFIG]["train"]
        amp = saved.get("amp", amp) if amp == "auto" else amp
        channels_last = saved.get("channels_last", channels_last) if channels_last == "auto" else channels_last
    return amp, channels_last


def check_resume(ckpt: dict, cfg: Config, targets: Targets, world: int, path: Path) -> None:
    """Fail in one line when the run cannot continue from `ckpt` as configured (config, processes, targets)."""
    check_resume_config(ckpt[checkpoint.CONFIG], cfg, path)
    check_resume_world(ckpt, world, path)
    if ckpt[checkpoint.TARGETS] != targets.to_dict():
        raise OkkhorError(f"--resume: {path} was trained on other targets ({ckpt[checkpoint.TARGETS]['names']})")


def check_resume_config(saved: dict, cfg: Config, path: Path) -> None:
    """Fail when the config differs from the checkpoint's in anything but RESUMABLE_KEYS (or, for a shaped lr
    schedule, in train.epochs)."""
    # a key newer than the checkpoint counts as unchanged when it holds its default
    old, new, default = flatten(saved), flatten(cfg.to_dict()), flatten(Config().to_dict())
    plan = [k for k in PLAN_KEYS if old.get(k, default.get(k)) != new[k]]
    if plan:
        detail = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in plan)
        keep = " ".join(f"--set {k}={old.get(k)}" for k in plan)
        raise OkkhorError(f"--resume: the batch plan changed: {detail}; {path}'s sample order and learning-rate "
                          f"schedule are laid out in its batches; resume with {keep}, or start a new run")
    changed = [k for k in new if old.get(k, default.get(k)) != new[k] and k not in RESUMABLE_KEYS + SOURCE_KEYS]
    if changed:
        detail = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:6])
        raise OkkhorError(f"--resume: {path} was trained with a different config: {detail}; only "
                          f"{', '.join(RESUMABLE_KEYS)} may change")
    if old["train.epochs"] != new["train.epochs"] and SCHEDULE_SPECS[cfg.train.schedule].fixed_length:
        raise OkkhorError(f"--resume: train.epochs changed ({old['train.epochs']} -> {new['train.epochs']}) but "
                          f"the {cfg.train.schedule} learning-rate schedule is laid out over the run's length; "
                          "resume with the same train.epochs, or start a new run")


def check_resume_sources(ckpt: dict, sources: Sequence[Source], path: Path) -> None:
    """Fail in one line, naming the first difference, when the run's sources are not the ones `ckpt` was trained on:
    their number, order, names and shares (before any data is read; `check_resume_data` then compares each one's
    fingerprints). A run of one data dir is checked as before sources existed: by its fingerprints alone."""
    recorded = checkpoint.source_records(ckpt)
    if len(sources) == 1 and len(recorded) <= 1:
        return
    had = ", ".join(f"{r['name']} ({r['dir']})" for r in recorded) or "one data dir"
    now = ", ".join(f"{s.name} ({s.dir})" for s in sources)
    if len(recorded) != len(sources):
        raise OkkhorError(f"--resume: {path} was trained on {len(recorded) or 1} source(s), {had}; this run reads "
                          f"{len(sources)}, {now}; {RESUME_USE}")
    for k, (old, s) in enumerate(zip(recorded, sources, strict=True), start=1):
        if old["name"] != s.name:
            raise OkkhorError(f"--resume: source {k} of {path} is {old['name']} ({old['dir']}), this run's is "
                              f"{s.name} ({s.dir}); {RESUME_USE}")
        if abs(float(old.get("share", 0.0)) - s.share) > 1e-9:
            raise OkkhorError(f"--resume: source {s.name} had share {float(old.get('share', 0.0)):g} in {path}, "
                              f"this run gives it {s.share:g}; {RESUME_USE}")


def check_resume_data(ckpt: dict, parts: Sequence[SourcePart], path: Path) -> None:
    """Fail in one line when a source's folds or prepared cache are not the ones `ckpt` recorded."""
    records = checkpoint.source_records(ckpt) if len(parts) > 1 else [ckpt.get(checkpoint.DATA)]
    for old, part in zip(records, parts, strict=True):
        where = part.source.dir
        check_same_data(old, part.fingerprint, path, where / "folds.csv", use=RESUME_USE,
                        **({"cache": f"the prepared cache of {where}"} if len(parts) > 1 else {}))


def check_resume_world(ckpt: dict, world: int, path: Path) -> None:
    """Fail when the number of processes differs from the checkpoint's: each process's share of the samples, its
    random states and the schedule's length follow it."""
    saved = checkpoint.world_size(ckpt)
    if saved != world:
        launch = "torchrun --nproc_per_node ..." if saved > 1 else "one process (no torchrun)"
        raise OkkhorError(f"--resume: {path} was trained with {saved} process{'es' if saved > 1 else ''} and this "
                          f"run has {world}; the sample shares, random states and schedule follow the count: resume "
                          f"with {saved} ({launch}), or start a new run")


def resume_point(ckpt: Optional[dict]) -> str:
    """Where a resumed run starts, for its first log line ("" for a new run)."""
    if not ckpt:
        return ""
    done, within = checkpoint.finished_epochs(ckpt), checkpoint.epoch_iteration(ckpt)
    return (f"resuming in epoch {done + 1} after iteration {within}; " if within else
            f"resuming after epoch {done}; ")
