"""What a run reads: its data sources' prepared images, labels and folds with the index sets of one run (made when
missing, as `okkhor prepare` and `okkhor split` would), and the seeded per-epoch batch sampler."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler

from okkhor.config import Config
from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.training.distributed import broadcast_error, is_main
from okkhor.training.step import BatchPlan


@dataclass(frozen=True)
class Source:
    """One data source of a run: its data dir, its name (metrics.csv's `source`) and its share as given (0: the
    rest, by training-set size; `source_weights` resolves it)."""

    dir: Path
    name: str
    share: float = 0.0


@dataclass
class SourcePart:
    """Where one source lies in a run's data (`load_sources`)."""

    source: Source
    offset: int              # its first row in the run's images and labels
    train: int               # its training images: the next `train` positions of the run's train_idx
    valid_idx: np.ndarray    # its validation fold, as rows of the run's images
    fingerprint: dict        # its {"folds", "cache"} fingerprints


@dataclass
class RunData:
    """The prepared training images (memory-mapped) with labels, and the index sets of one run.

    With several sources the rows are the sources' caches one after the other (images: a StackedImages),
    train_idx holds each source's training fold in source order, valid_idx every source's validation fold, and
    `sources` says where each lies; `fingerprint` is then the first source's.
    """

    images: np.ndarray
    labels: np.ndarray       # int64 [n, T], aligned to the cache's image order
    train_idx: np.ndarray    # training fold (after data.limit)
    valid_idx: np.ndarray    # validation fold
    clean_idx: np.ndarray    # fixed clean subset of the training fold evaluated every epoch
    fingerprint: dict = field(default_factory=dict)  # {"folds": sha256, "cache": sha256}: what a checkpoint records
    sources: list[SourcePart] = field(default_factory=list)  # load_sources: one per source, in order


class StackedImages:
    """Several sources' image arrays [n_s, H, W] read as one [sum n_s, H, W] array (rows in source order) without
    copying them: what GraphemeDataset reads (`len`, `ndim`, `shape`, and one row at a time)."""

    ndim = 3

    def __init__(self, arrays: Sequence[np.ndarray]):
        if not arrays or any(a.ndim != 3 or a.shape[1:] != arrays[0].shape[1:] for a in arrays):
            raise ValueError(f"arrays must be [n, H, W] of one H, W, got {[a.shape for a in arrays]}")
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0, *[len(a) for a in arrays]])
        self.shape = (int(self.offsets[-1]), *arrays[0].shape[1:])
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row) -> np.ndarray:
        if isinstance(row, (int, np.integer)):
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} is not in 0..{len(self) - 1}")
            s = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return self.arrays[s][int(row) - int(self.offsets[s])]
        return np.stack([self[int(r)] for r in np.arange(len(self))[row]])


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
    from okkhor.io.labels import read_train_labels

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


# ---------------------------------------------------------------------------------------------- the sources

def resolve_sources(data_dirs: Union[str, Path, Sequence[Union[str, Path]], None], cfg: Config) -> list[Source]:
    """The run's sources: the --data dirs, or data.sources when none is given; an entry of data.sources of the same
    dir lends a --data dir its name and share. Names default to the dirs' names, made unique (a, a-2, ...). Whether
    the dirs exist is checked where they are read."""
    entries = {Path(s.dir).resolve(): s for s in cfg.data.sources}
    if data_dirs is None or (not isinstance(data_dirs, (str, Path)) and not list(data_dirs)):
        if not cfg.data.sources:
            raise OkkhorError("no data: pass --data DATA_DIR (repeatable) or set data.sources")
        dirs = [Path(s.dir) for s in cfg.data.sources]
    else:
        dirs = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(d) for d in data_dirs]
    seen: dict[Path, Path] = {}
    for d in dirs:
        if d.resolve() in seen:
            raise OkkhorError(f"{d}: the same data dir is given twice (as {seen[d.resolve()]}); a source is read once")
        seen[d.resolve()] = d
    given = [entries.get(d.resolve()) for d in dirs]
    names: list[str] = []
    for d, entry in zip(dirs, given, strict=True):
        name = entry.name if entry is not None and entry.name else d.resolve().name
        if entry is not None and entry.name and name in names:
            raise OkkhorError(f"data.sources: the name {name!r} is given twice; names must be unique")
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    bad = [n for n in names if not n or "/" in n]
    if bad:
        raise OkkhorError(f"data.sources: bad source name {bad[0]!r}: names are non-empty and hold no '/'")
    return [Source(d, n, entry.share if entry is not None else 0.0) for d, n, entry in zip(dirs, names, given,
                                                                                            strict=True)]


def source_targets(sources: Sequence[Source], cfg: Config) -> Targets:
    """The targets every source's class map gives (data.class_map, data.targets); sources that disagree on the
    target names or class counts are one line naming the first difference."""
    from okkhor.io.labels import load_targets

    missing = [s.dir for s in sources if not s.dir.is_dir()] if len(sources) > 1 else []
    if missing:
        raise OkkhorError(f"{missing[0]}: data directory not found")
    first = load_targets(sources[0].dir, cfg.data.class_map, cfg.data.targets)
    for source in sources[1:]:
        other = load_targets(source.dir, cfg.data.class_map, cfg.data.targets)
        where = f"{_class_map_of(sources[0], cfg)} and {_class_map_of(source, cfg)}"
        if other.names != first.names:
            raise OkkhorError(f"data: sources {where} disagree on the targets: {', '.join(first.names)} vs "
                              f"{', '.join(other.names)}; every source must have the same targets")
        for name, mine, theirs in zip(first.names, first.num_classes, other.num_classes, strict=True):
            if mine != theirs:
                raise OkkhorError(f"data: sources {where} disagree on the targets: {name} has {mine} classes in "
                                  f"the first and {theirs} in the second; every source must have the same class map")
    return first


def _class_map_of(source: Source, cfg: Config) -> str:
    path = Path(cfg.data.class_map) if cfg.data.class_map else source.dir / "class_map.csv"
    return f"{source.name} ({path if path.is_file() else 'the built-in class map'})"


def source_weights(shares: Sequence[float], sizes: Sequence[int], where: Sequence[str] = ()) -> np.ndarray:
    """Each source's share of an epoch: the shares given, and the rest (1 - their sum) split among the sources
    without one (share 0) by their sizes; shares given to every source must sum to 1. `where` names the sources in
    errors."""
    shares, sizes = np.asarray(shares, dtype=float), np.asarray(sizes, dtype=float)
    names = list(where) or [f"source {k + 1}" for k in range(len(shares))]
    given, total = shares > 0, float(shares.sum())
    if given.all():
        if abs(total - 1.0) > 1e-6:
            raise OkkhorError(f"data.sources: the shares of {', '.join(names)} sum to {total:g}; shares given to "
                              "every source must sum to 1 (or leave one at 0: it takes the rest)")
        return shares
    if total >= 1.0 - 1e-9:
        rest = ", ".join(n for n, g in zip(names, given, strict=True) if not g)
        raise OkkhorError(f"data.sources: the shares given sum to {total:g} and leave nothing for {rest}")
    weights = shares.copy()
    weights[~given] = (1.0 - total) * sizes[~given] / max(sizes[~given].sum(), 1.0)
    return weights


def epoch_counts(weights: Sequence[float], total: int) -> np.ndarray:
    """Samples per source in an epoch of `total`: the weights' shares, rounded by largest remainder to sum to it."""
    exact = np.asarray(weights, dtype=float) * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - int(counts.sum())]] += 1
    return counts


def load_sources(sources: Sequence[Source], cfg: Config, targets: Targets, log: Callable[[str], None] = print,
                 show_progress: bool = True) -> RunData:
    """Every source's run data (`load_run_data`: its own cache, folds and index sets), as one RunData; the clean
    subset is drawn over the training folds of all of them (for one source: load_run_data's own)."""
    parts = [load_run_data(s.dir, cfg, targets, log, show_progress) for s in sources]
    if len(parts) == 1:
        data = parts[0]
        data.sources = [SourcePart(sources[0], 0, len(data.train_idx), data.valid_idx, data.fingerprint)]
        return data
    offsets = np.cumsum([0, *[len(p.labels) for p in parts]])
    train_idx = np.concatenate([p.train_idx + o for p, o in zip(parts, offsets, strict=False)])
    valid = [p.valid_idx + o for p, o in zip(parts, offsets, strict=False)]
    n_clean = min(cfg.eval.train_clean_size, len(train_idx))
    clean_idx = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, n_clean, replace=False))
    placed = [SourcePart(s, int(o), len(p.train_idx), v, p.fingerprint)
              for s, p, o, v in zip(sources, parts, offsets, valid, strict=False)]
    return RunData(StackedImages([p.images for p in parts]), np.concatenate([p.labels for p in parts]), train_idx,
                   np.concatenate(valid), clean_idx, parts[0].fingerprint, placed)


# ---------------------------------------------------------------------------------------------- the sampler

class EpochBatches(Sampler):
    """One process's micro-batches of one epoch (a batch sampler) over the training positions of one or more sources.

    The epoch's order is seeded by (seed, epoch) alone, so it is the same with any number of workers and after a
    resume. One source drawn by size: a permutation of its `n` positions. Several sources (`n` a list of their
    sizes, their positions one source after the other), or an `epoch_size`: each source draws its share
    (`source_weights` of `shares`; default by size) of the epoch's `epoch_size` samples (0: the sum of the sizes)
    from a permutation of its images, a fresh permutation after each full pass, so every image of a source comes
    at most once an epoch while its count allows; then one permutation mixes the sources' draws.
    With several processes each takes every world-th sample (the order is wrapped around so all get the same count).
    Batches have `plan.batch_size` samples, read when the epoch's iteration starts; a last batch of a single sample
    joins the one before it (batch norm cannot train on one). Each sample is a pair (position, epoch): the epoch
    reaches the dataset's augmentation with the index, so persistent loader workers need no per-epoch state.
    """

    def __init__(self, n: Union[int, Sequence[int]], plan: BatchPlan, seed: int, rank_: int = 0, world: int = 1,
                 shares: Optional[Sequence[float]] = None, epoch_size: int = 0):
        self.sizes = [int(n)] if isinstance(n, (int, np.integer)) else [int(k) for k in n]
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"n must be >= 1 for every source, got {n}")
        if not 0 <= rank_ < world:
            raise ValueError(f"rank {rank_} is not in 0..{world - 1}")
        if epoch_size < 0:
            raise ValueError(f"epoch_size must be >= 0, got {epoch_size}")
        shares = [0.0] * len(self.sizes) if shares is None else list(shares)
        if len(shares) != len(self.sizes):
            raise ValueError(f"{len(shares)} shares for {len(self.sizes)} sources")
        self.weights = source_weights(shares, self.sizes)
        self.n = int(epoch_size or sum(self.sizes))   # samples per epoch
        self.counts = epoch_counts(self.weights, self.n)
        self.plan, self.seed, self.rank, self.world = plan, seed, rank_, world
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

    def order(self) -> np.ndarray:
        """The epoch's positions, in order (before the processes' shares are taken)."""
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, 0x5A3D]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        if len(self.sizes) == 1 and self.n == self.sizes[0]:
            return torch.randperm(self.n, generator=generator).numpy()
        draws, start = [], 0
        for size, count in zip(self.sizes, self.counts.tolist(), strict=True):
            passes = [torch.randperm(size, generator=generator).numpy() for _ in range(math.ceil(count / size))]
            draws.append(np.concatenate(passes or [np.zeros(0, np.int64)])[:count] + start)
            start += size
        mixed = np.concatenate(draws)
        return mixed[torch.randperm(len(mixed), generator=generator).numpy()]

    def __iter__(self):
        order = np.resize(self.order(), self._share() * self.world)
        mine = [(i, self.epoch) for i in order[self.rank::self.world].tolist()]
        size, count = self.plan.batch_size, len(self)
        first = self._skip[1] if self._skip[0] == self.epoch else 0
        self._skip = (0, 0)
        for b in range(first, count):
            yield mine[b * size:] if b == count - 1 else mine[b * size:(b + 1) * size]
