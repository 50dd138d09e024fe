"""What a run reads: the prepared images, labels and folds with the index sets of one run (made when missing, as
`okkhor prepare` and `okkhor split` would), and the seeded per-epoch batch sampler."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler

from okkhor.config import Config
from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.training.distributed import broadcast_error, is_main
from okkhor.training.step import BatchPlan


@dataclass
class RunData:
    """The prepared training images (memory-mapped) with labels, and the index sets of one run."""

    images: np.ndarray
    labels: np.ndarray       # int64 [n, T], aligned to the cache's image order
    train_idx: np.ndarray    # training fold (after data.limit)
    valid_idx: np.ndarray    # validation fold
    clean_idx: np.ndarray    # fixed clean subset of the training fold evaluated every epoch
    fingerprint: dict = field(default_factory=dict)  # {"folds": sha256, "cache": sha256}: what a checkpoint records


def _ensure_cache_and_folds(data_dir: Path, cfg: Config, targets: Targets, log: Callable[[str], None],
                            show_progress: bool) -> Path:
    """Make the prepare cache and folds.csv when missing, with the same code as `okkhor prepare` / `okkhor split`."""
    from okkhor.data.folds import split
    from okkhor.data.prepare import PrepareOptions, cache_paths, default_cache_dir, prepare_split
    from okkhor.io.kaggle import image_parquet_files
    from okkhor.utils.sizes import size_text

    opts = PrepareOptions(size=cfg.data.image_size, crop=cfg.data.crop)
    cache_dir = default_cache_dir(data_dir, opts)
    if image_parquet_files(data_dir, "train"):
        npy, reused = prepare_split(data_dir, "train", opts, cache_dir, show_progress=show_progress)
        if not reused:
            log(f"train: prepared the training images at {size_text(opts.size)} px (crop={opts.crop}) into {cache_dir}")
    elif not cache_paths(cache_dir, "train")[0].is_file():
        raise OkkhorError(f"{data_dir}: no train_image_data_*.parquet files and no prepared cache {cache_dir}")
    folds = data_dir / "folds.csv"
    if not folds.is_file():
        split(data_dir, targets, folds=cfg.data.folds, seed=cfg.seed)
        log(f"train: wrote {folds} ({cfg.data.folds} folds, seed {cfg.seed}), as `okkhor split` would")
    return cache_dir


def load_run_data(data_dir: str | Path, cfg: Config, targets: Targets, log: Callable[[str], None] = print,
                  show_progress: bool = True) -> RunData:
    """Images, labels, folds and index sets of a run; the first process makes a missing cache or folds file."""
    from okkhor.data.folds import folds_fingerprint, read_folds, stratified_subset
    from okkhor.data.prepare import PrepareOptions, cache_fingerprint, default_cache_dir, load_cache
    from okkhor.io.kaggle import read_train_labels

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    error = None
    if is_main():
        try:
            _ensure_cache_and_folds(data_dir, cfg, targets, log, show_progress)
        except OkkhorError as exc:
            error = str(exc)
    error = broadcast_error(error)
    if error:
        raise OkkhorError(error)
    images, ids = load_cache(default_cache_dir(data_dir, PrepareOptions(cfg.data.image_size, cfg.data.crop)), "train")
    csv = data_dir / "train.csv"
    df, csv_labels = read_train_labels(csv, targets)
    rows = pd.Index(df["image_id"].astype(str)).get_indexer(ids)
    if (rows < 0).any():
        raise OkkhorError(f"{csv}: no labels for cached image {ids[int(np.flatnonzero(rows < 0)[0])]}; "
                          "the cache is stale: delete it and rerun")
    labels = csv_labels[rows]
    folds_path = data_dir / "folds.csv"
    folds = read_folds(folds_path, ids)
    n_folds = int(folds.max()) + 1
    if n_folds != cfg.data.folds:
        raise OkkhorError(f"{folds_path}: has {n_folds} folds but data.folds={cfg.data.folds}; set data.folds="
                          f"{n_folds} or rerun `okkhor split --folds {cfg.data.folds}`")
    valid_idx = np.flatnonzero(folds == cfg.data.fold)
    train_idx = np.flatnonzero(folds != cfg.data.fold)
    if len(valid_idx) == 0 or len(train_idx) == 0:
        missing = "validation" if not len(valid_idx) else "training"
        raise OkkhorError(f"{folds_path}: fold {cfg.data.fold} leaves no {missing} images")
    if cfg.data.limit:
        train_idx = train_idx[stratified_subset(labels[train_idx], targets, cfg.data.limit, cfg.seed)]
    n_clean = min(cfg.eval.train_clean_size, len(train_idx))
    clean_idx = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, n_clean, replace=False))
    fingerprint = {"folds": folds_fingerprint(ids, folds), "cache": cache_fingerprint(images, ids)}
    return RunData(images, labels, train_idx, valid_idx, clean_idx, fingerprint)


class EpochBatches(Sampler):
    """One process's micro-batches of one epoch (a batch sampler).

    The epoch's order is a permutation seeded by (seed, epoch) alone, so it is the same with any number of
    workers and after a resume. With several processes each takes every world-th sample (the permutation is
    wrapped around so all get the same count). Batches have `plan.batch_size` samples, read when the epoch's
    iteration starts; a last batch of a single sample joins the one before it (batch norm cannot train on one).
    Each sample is a pair (position, epoch): the epoch reaches the dataset's augmentation with the index, so
    persistent loader workers need no per-epoch state.
    """

    def __init__(self, n: int, plan: BatchPlan, seed: int, rank_: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 <= rank_ < world:
            raise ValueError(f"rank {rank_} is not in 0..{world - 1}")
        self.n, self.plan, self.seed, self.rank, self.world = n, plan, seed, rank_, world
        self.epoch = 0
        self._skip = (0, 0)  # (epoch, batches): the first batches of that epoch were trained before a resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Leave out the first `batches` batches of `epoch` (once): a mid-epoch checkpoint trained on them.
        `len()` stays the epoch's full count, which the trainer's iteration counter expects."""
        self._skip = (int(epoch), int(batches))

    def _share(self) -> int:
        return math.ceil(self.n / self.world)

    def __len__(self) -> int:
        share, size = self._share(), self.plan.batch_size
        count = math.ceil(share / size)
        return count - 1 if count > 1 and share % size == 1 else count

    def __iter__(self):
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, 0x5A3D]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = np.resize(torch.randperm(self.n, generator=generator).numpy(), self._share() * self.world)
        mine = [(i, self.epoch) for i in order[self.rank::self.world].tolist()]
        size, count = self.plan.batch_size, len(self)
        first = self._skip[1] if self._skip[0] == self.epoch else 0
        self._skip = (0, 0)
        for b in range(first, count):
            yield mine[b * size:] if b == count - 1 else mine[b * size:(b + 1) * size]
