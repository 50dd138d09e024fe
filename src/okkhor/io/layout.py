"""The competition's file layout: image files and their rows per split, each split's CSV files, class_map.csv."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from okkhor.errors import OkkhorError
from okkhor.targets import CLASS_MAP_COLUMNS, Targets
from okkhor.utils.files import write_csv_atomic

SPLIT_CSVS = {"train": ("train.csv",), "test": ("test.csv", "sample_submission.csv", "test_labels.csv")}
MAX_ROWS_PER_FILE = 50_210  # rows of one competition parquet file
DEFAULT_ROWS_PER_FILE = 10_042  # a fifth of that: files are the unit of parallel work
SPLIT_IN_TWO_ROWS = 4_000  # by default a split this big is at least two files, so two cores share it


def image_file_name(split: str, index: int) -> str:
    """The name of a split's index-th image file: `<split>_image_data_<index>.parquet`."""
    return f"{split}_image_data_{index}.parquet"


def even_chunks(n: int, most: int, least_parts: int = 1) -> list[int]:
    """Sizes of max(ceil(n / most), least_parts) nearly equal parts of n (none when n is 0)."""
    if n == 0:
        return []
    parts = min(max(-(-n // most), least_parts), n)
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def file_rows(n: int, rows_per_file: int | None = None) -> list[int]:
    """Rows of each parquet file of a split of n images.

    With `rows_per_file`, ceil(n / rows_per_file) nearly equal files. By default files of at most 10,042 rows,
    and at least two once the split has 4,000 images: files are the unit of parallel work, and one writer pays
    about 1.7 CPU-seconds per file for the 32,332 columns, so small splits stay whole. The layout depends on n
    alone, never on the worker count, so the files are the same whatever --workers is.
    """
    if rows_per_file is not None:
        return even_chunks(n, rows_per_file)
    return even_chunks(n, DEFAULT_ROWS_PER_FILE, 2 if n >= SPLIT_IN_TWO_ROWS else 1)


def write_split_csvs(out_dir: str | Path, split: str, labels: pd.DataFrame, targets: Sequence[str]) -> list[Path]:
    """Write the CSV files of `split` from `labels` (image_id, one column per target, and any more columns such as
    grapheme or seen). train: train.csv is `labels`. test: test.csv has one row_id `<image_id>_<target>` per image
    and target (targets in sorted order, as Kaggle's), sample_submission.csv predicts 0 for each, and
    test_labels.csv is `labels`."""
    out_dir = Path(out_dir)
    if split not in SPLIT_CSVS:
        raise OkkhorError(f"split {split!r}: expected one of {', '.join(SPLIT_CSVS)}")
    if split == "train":
        frames = {"train.csv": labels}
    else:
        components = sorted(targets)
        ids = [i for i in labels["image_id"] for _ in components]
        comps = components * len(labels)
        row_ids = [f"{i}_{c}" for i, c in zip(ids, comps, strict=False)]
        frames = {"test.csv": pd.DataFrame({"row_id": row_ids, "image_id": ids, "component": comps}),
                  "sample_submission.csv": pd.DataFrame({"row_id": row_ids, "target": 0}),
                  "test_labels.csv": labels}
    for name, frame in frames.items():
        write_csv_atomic(out_dir / name, frame)
    return [out_dir / name for name in frames]


def class_map_frame(targets: Targets) -> pd.DataFrame:
    """class_map.csv rows (component_type,label,component) of `targets`; a label without a component name gets
    its number."""
    rows = []
    for name, n in zip(targets.names, targets.num_classes, strict=False):
        names = targets.components.get(name, ())
        rows += [(name, label, names[label] if label < len(names) else str(label)) for label in range(n)]
    return pd.DataFrame(rows, columns=list(CLASS_MAP_COLUMNS))
