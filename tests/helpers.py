"""Tiny Kaggle-format data sets for tests: drawn shapes whose labels a small network learns in a few steps.

`make_tiny_kaggle(root, ...)` writes, under `root`:
  train_image_data_<i>.parquet, train.csv, test_image_data_0.parquet, test.csv, sample_submission.csv,
  class_map.csv, and test_labels.csv (the true test labels, image_id + one column per target, for scoring).

Every image has the same fixed frame, so cropping to the ink gives the same box for all of them; inside the
frame, target t owns a horizontal band and class c of target t is a dark block at the c-th slot of that band.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from okkhor.bengali import TARGETS as BENGALI_TARGETS
from okkhor.cli import app
from okkhor.config import Config
from okkhor.io import checkpoint
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, write_image_parquet
from okkhor.io.labels import load_targets
from okkhor.models.model import build_model

# frame (inclusive outer edge, thickness) and inner drawing area of every tiny image
FRAME = (12, 124, 12, 223)   # y0, y1, x0, x1
THICK = 3


@dataclass(frozen=True)
class TinyKaggle:
    """What `make_tiny_kaggle` wrote: the folder, target names and class counts, and the labels it drew."""

    root: Path
    names: tuple[str, ...]
    num_classes: tuple[int, ...]
    train_ids: list[str]
    train_labels: np.ndarray   # int64 [n_train, T]
    test_ids: list[str]
    test_labels: np.ndarray    # int64 [n_test, T]


def draw_images(labels: np.ndarray, num_classes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 137, 236] images (dark ink on a light background) encoding `labels` [n, T] as block positions."""
    n, n_targets = labels.shape
    images = rng.integers(238, 256, size=(n, IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    y0, y1, x0, x1 = FRAME

    def ink() -> int:
        return int(rng.integers(0, 40))

    for i in range(n):
        img = images[i]
        img[y0:y0 + THICK, x0:x1 + 1] = ink()
        img[y1 - THICK + 1:y1 + 1, x0:x1 + 1] = ink()
        img[y0:y1 + 1, x0:x0 + THICK] = ink()
        img[y0:y1 + 1, x1 - THICK + 1:x1 + 1] = ink()
        inner_y0, inner_x0 = y0 + THICK + 2, x0 + THICK + 2
        band = (y1 - THICK - 2 - inner_y0) // n_targets
        width = x1 - THICK - 2 - inner_x0
        for t in range(n_targets):
            slot = width / num_classes[t]
            by = inner_y0 + t * band + band // 5 + int(rng.integers(-2, 3))
            bh = max(2, band * 3 // 5)
            bx = inner_x0 + int(labels[i, t] * slot + slot * 0.15) + int(rng.integers(-1, 2))
            bw = max(2, int(slot * 0.7))
            img[max(by, inner_y0):by + bh, max(bx, inner_x0):bx + bw] = ink()
    return images


def _class_map(root: Path, classes: Optional[Sequence[int]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if classes is None:
        src = resources.files("okkhor.resources").joinpath("class_map.csv")
        with resources.as_file(src) as path:
            shutil.copyfile(path, root / "class_map.csv")
        df = pd.read_csv(root / "class_map.csv", dtype={"component": str}, keep_default_na=False)
        counts = df.groupby("component_type", sort=False).size()
        return tuple(counts.index), tuple(int(v) for v in counts.to_numpy())
    names = BENGALI_TARGETS[:len(classes)] if len(classes) <= 3 else tuple(f"target_{t}" for t in range(len(classes)))
    rows = [(name, c, f"{name[0]}{c}") for name, n in zip(names, classes, strict=False) for c in range(n)]
    pd.DataFrame(rows, columns=["component_type", "label", "component"]).to_csv(root / "class_map.csv", index=False)
    return tuple(names), tuple(int(n) for n in classes)


def make_tiny_kaggle(root: str | Path, n_train: int = 96, n_test: int = 16,
                     classes: Optional[Sequence[int]] = (4, 3, 2), seed: int = 0, train_files: int = 1,
                     used_classes: int = 4) -> TinyKaggle:
    """Write a tiny Kaggle-format data set under `root` (created) and return what it holds.

    classes: class count per target, written as DATA_DIR/class_map.csv (targets named like the Bengali three
      when there are at most three); None copies the built-in Bengali map (168/11/7) instead, and labels are
      then drawn from the first `used_classes` classes of each target so they stay learnable.
    Labels cycle through every class of every target before repeating, so each class occurs.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names, num_classes = _class_map(root, classes)
    drawn = [n if classes is not None else min(n, used_classes) for n in num_classes]

    def labels_for(n: int) -> np.ndarray:
        cols = [rng.permutation(np.arange(n) % k) for k in drawn]
        return np.stack(cols, axis=1).astype(np.int64) if n else np.zeros((0, len(drawn)), np.int64)

    train_labels, test_labels = labels_for(n_train), labels_for(n_test)
    train_ids = [f"Train_{i}" for i in range(n_train)]
    test_ids = [f"Test_{i}" for i in range(n_test)]
    layout = [min(n, used_classes) for n in num_classes] if classes is None else num_classes
    train_images = draw_images(train_labels, layout, rng)
    for k, part in enumerate(np.array_split(np.arange(n_train), train_files)):
        write_image_parquet(root / f"train_image_data_{k}.parquet", [train_ids[i] for i in part], train_images[part])
    df = pd.DataFrame({"image_id": train_ids, **{name: train_labels[:, t] for t, name in enumerate(names)}})
    df["grapheme"] = ["".join(f"{v}" for v in row) for row in train_labels]
    df.to_csv(root / "train.csv", index=False)
    if n_test:
        write_image_parquet(root / "test_image_data_0.parquet", test_ids, draw_images(test_labels, layout, rng))
        rows = [(f"{i}_{name}", i, name) for i in test_ids for name in names]
        pd.DataFrame(rows, columns=["row_id", "image_id", "component"]).to_csv(root / "test.csv", index=False)
        pd.DataFrame({"row_id": [r[0] for r in rows], "target": 0}).to_csv(root / "sample_submission.csv",
                                                                            index=False)
        pd.DataFrame({"image_id": test_ids, **{name: test_labels[:, t] for t, name in enumerate(names)}}).to_csv(
            root / "test_labels.csv", index=False)
    return TinyKaggle(root, names, num_classes, train_ids, train_labels, test_ids, test_labels)


def copy_tiny_kaggle(src: TinyKaggle, dst: str | Path) -> TinyKaggle:
    """A copy of a tiny data set in another folder (to let a test write caches, folds or runs beside it)."""
    dst = Path(dst)
    shutil.copytree(src.root, dst, dirs_exist_ok=True)
    return TinyKaggle(dst, src.names, src.num_classes, src.train_ids, src.train_labels, src.test_ids,
                      src.test_labels)


def _is_progress(line: str) -> bool:
    """A progress line: tqdm's bar ("... 40%|####  | ...") or okkhor.utils.progress.LineProgress's, tqdm's line without
    the bar graphic ("desc: 100%|| 8/8 [00:02<00:00, 3.5img/s]", or "desc: 8img [00:02, 3.5img/s]" without a total)."""
    import re

    return "%|" in line or re.match(r"^[\w ./-]+: \d+[a-zA-Z]* \[", line.strip()) is not None


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    """Exit code non-zero, no traceback, and one `okkhor: error: ...` line holding every needle (progress lines of
    the work done before the error may precede it)."""
    assert code != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.strip().splitlines() if line.strip() and not _is_progress(line)]
    assert len(lines) == 1, output
    assert lines[0].startswith("okkhor: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# a one-epoch tiny-model run on 32 px images and 3 folds: the base of the cv, fine-tuning and averaging tests
TINY_TRAIN = ["model.name=test_efficientnet", "data.image_size=32", "data.folds=3", "train.batch_size=16",
              "data.workers=0", "eval.train_clean_size=16", "eval.batch_size=64", "train.epochs=1"]


def prepared_tiny(tiny_kaggle_dir, **kwargs):
    """A private copy of a tiny data set with its 32 px cache and 3 folds already made (as TINY_TRAIN reads it)."""
    from okkhor.data.folds import split
    from okkhor.data.prepare import prepare
    from okkhor.io.labels import load_targets

    tiny = tiny_kaggle_dir(copy=True, **kwargs)
    prepare(tiny.root, size=32, show_progress=False)
    split(tiny.root, load_targets(tiny.root), folds=3, seed=42)
    return tiny


# a small, fast timm model and tiny images keep each epoch to a second or two on two CPU cores
FAST = ["model.name=test_efficientnet", "data.image_size=32", "data.folds=4", "train.batch_size=16",
        "data.workers=0", "eval.train_clean_size=32", "eval.batch_size=64", "train.epochs=2"]

runner = CliRunner()


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output



def make_checkpoint(path: Path, data_dir: Path, seed: int = 0, image_size: int = 32, crop: bool = True,
                    counts: bool = True, record_data_dir: bool = True, fold: int = 0) -> Path:
    """A checkpoint with the keys inference reads, written as the trainer writes them (okkhor.io.checkpoint), with a
    small timm model at random init. counts: with train_class_counts; record_data_dir: with the data record of the
    run's data dir (no fingerprints: a made-up run)."""
    targets = load_targets(data_dir)
    cfg = Config()
    cfg.data.image_size, cfg.data.crop, cfg.data.fold = image_size, crop, fold
    cfg.model.name = "test_resnet"
    torch.manual_seed(seed)
    model = build_model(cfg.model, targets)
    labels = pd.read_csv(data_dir / "train.csv")
    class_counts = {name: np.bincount(labels[name], minlength=n).tolist()
                    for name, n in zip(targets.names, targets.num_classes, strict=False)}
    data = checkpoint.data_record({}, data_dir) if record_data_dir else {}
    ckpt = {checkpoint.MODEL: model.state_dict(), checkpoint.EMA: None,
            **checkpoint.meta_record(cfg.to_dict(), targets.to_dict(), class_counts, data)}
    if not counts:
        del ckpt[checkpoint.CLASS_COUNTS]
    return checkpoint.save(path, ckpt)
