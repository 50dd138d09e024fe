"""Multilabel stratified folds over all targets at once (iterative-stratification)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

from okkhor.errors import OkkhorError
from okkhor.io.labels import read_csv_checked, read_train_labels
from okkhor.targets import Targets
from okkhor.utils.files import write_csv_atomic


def one_hot_all(labels: np.ndarray, targets: Targets) -> np.ndarray:
    """Labels [n, T] -> concatenated one-hot indicators [n, sum(num_classes)] (uint8)."""
    offsets = np.concatenate([[0], np.cumsum(targets.num_classes)[:-1]])
    out = np.zeros((len(labels), sum(targets.num_classes)), dtype=np.uint8)
    rows = np.arange(len(labels))
    for t, off in enumerate(offsets):
        out[rows, off + labels[:, t]] = 1
    return out


def make_folds(labels: np.ndarray, targets: Targets, folds: int = 5, seed: int = 42) -> np.ndarray:
    """Fold index per sample [n], stratified over every class of every target."""
    if folds < 2:
        raise OkkhorError(f"--folds {folds}: at least 2 folds are needed")
    if len(labels) < folds:
        raise OkkhorError(f"--folds {folds}: more folds than images ({len(labels)})")
    y = one_hot_all(labels, targets)
    out = np.full(len(labels), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(labels)), y)):
        out[valid_idx] = k
    return out


GROUPINGS = ("none", "grapheme")  # `okkhor split --group`: grapheme = every label triple stays in one fold


def label_groups(labels: np.ndarray) -> np.ndarray:
    """Group id per sample [n]: samples with the same labels of every target (the same grapheme) share one."""
    return np.unique(np.asarray(labels).reshape(len(labels), -1), axis=0, return_inverse=True)[1].ravel()


def make_group_folds(labels: np.ndarray, targets: Targets, folds: int = 5, seed: int = 42,
                     note: Callable[[str], None] | None = None) -> np.ndarray:
    """Fold per sample [n] holding out whole label triples: no triple is split across folds, so validation
    measures graphemes the model never saw. Stratified over the first target (the root) by sklearn's
    StratifiedGroupKFold, which balances that target's classes across folds while keeping groups whole. Where no
    root class has as many images as folds (a small set), stratifying is impossible: the folds are then grouped
    only (GroupKFold, shuffled), and `note` gets one line saying so."""
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = label_groups(labels)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if folds < 2:
        raise OkkhorError(f"--folds {folds}: at least 2 folds are needed")
    if n_groups < folds:
        raise OkkhorError(f"--folds {folds}: more folds than distinct label triples ({n_groups})")
    out = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    if np.bincount(labels[:, 0]).max() < folds:  # sklearn refuses to stratify when every class is this small
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        if note is not None:
            note(f"note: no {targets.names[0]} class has {folds} images, so the {folds} folds keep label triples "
                 f"whole without stratifying by {targets.names[0]}")
    with warnings.catch_warnings():  # it warns when a root has fewer groups than folds; the split is still valid
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, valid_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels[:, 0], groups)):
            out[valid_idx] = k
    return out


def stratified_subset(labels: np.ndarray, targets: Targets, n: int, seed: int = 42) -> np.ndarray:
    """Sorted indices of a stratified subset of n samples (all of them when n >= len)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    y = one_hot_all(labels, targets)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=n, test_size=len(labels) - n,
                                                random_state=seed)
    idx, _ = next(splitter.split(np.zeros(len(labels)), y))
    return np.sort(idx)


def split(data_dir: str | Path, targets: Targets, folds: int = 5, seed: int = 42,
          out: str | Path | None = None, group: str = "none", note: Callable[[str], None] | None = None) -> Path:
    """Write `image_id,fold` for every row of DATA_DIR/train.csv (default DATA_DIR/folds.csv).

    group="grapheme" holds out whole label triples (make_group_folds); "none" stratifies images (make_folds).
    """
    if group not in GROUPINGS:
        raise OkkhorError(f"--group {group!r}: not one of {', '.join(GROUPINGS)}")
    data_dir = Path(data_dir)
    df, labels = read_train_labels(data_dir / "train.csv", targets)
    if group == "grapheme":
        fold = make_group_folds(labels, targets, folds, seed, note=note)
    else:
        fold = make_folds(labels, targets, folds, seed)
    out = Path(out) if out else data_dir / "folds.csv"
    write_csv_atomic(out, pd.DataFrame({"image_id": df["image_id"].astype(str), "fold": fold}))
    return out


def read_folds(path: str | Path, image_ids: list[str]) -> np.ndarray:
    """Fold per image, aligned to image_ids; fails naming the file when an image has no fold."""
    df = read_csv_checked(path, ["image_id", "fold"], "folds CSV")
    mapping = dict(zip(df["image_id"].astype(str), df["fold"].astype(int), strict=False))
    missing = [i for i in image_ids if i not in mapping]
    if missing:
        raise OkkhorError(f"{path}: no fold for image {missing[0]} ({len(missing)} missing); rerun `okkhor split`")
    return np.array([mapping[i] for i in image_ids], dtype=np.int64)


def folds_fingerprint(image_ids: list[str], folds: np.ndarray) -> str:
    """A sha256 of the (image id, fold) pairs, in id order: the same for the same split whatever the row order."""
    import hashlib

    order = np.argsort(np.asarray(image_ids, dtype=str), kind="stable")
    text = "\n".join(f"{image_ids[i]},{int(folds[i])}" for i in order)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_data(recorded: dict | None, current: dict, ckpt: str | Path, folds_csv: str | Path,
                    cache: str | Path = "the prepared cache", use: str = "") -> None:
    """Refuse, in one line, folds (or a cache) other than the ones checkpoint `ckpt` recorded ({"folds", "cache"}
    fingerprints; a checkpoint without them passes). `use` says what to do instead."""
    recorded = recorded or {}
    tail = f"; {use}" if use else ""
    if recorded.get("folds") and current.get("folds") and recorded["folds"] != current["folds"]:
        raise OkkhorError(f"{folds_csv}: is not the split {ckpt} was trained with (re-split since?): its folds "
                          f"would mix training and validation images{tail}")
    if recorded.get("cache") and current.get("cache") and recorded["cache"] != current["cache"]:
        raise OkkhorError(f"{cache}: is not the prepared cache {ckpt} was trained on (other images or image "
                          f"ids){tail}")
