"""The competition's CSV files of one split, from a labels frame: train.csv, or test.csv, sample_submission.csv
and test_labels.csv (the answers, for `okkhor score`); and class_map.csv from targets."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from okkhor.errors import OkkhorError
from okkhor.targets import CLASS_MAP_COLUMNS, Targets
from okkhor.utils.files import atomic_path

SPLIT_CSVS = {"train": ("train.csv",), "test": ("test.csv", "sample_submission.csv", "test_labels.csv")}


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """A CSV written atomically (no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
    return Path(path)


def write_split_csvs(out_dir: str | Path, split: str, labels: pd.DataFrame, targets: Sequence[str]) -> list[Path]:
    """Write the CSV files of `split` from `labels` (image_id, one column per target, and any more columns such as
    grapheme or seen). train: train.csv is `labels`. test: test.csv has one row_id `<image_id>_<target>` per image
    and target (targets in sorted order, as Kaggle's), sample_submission.csv predicts 0 for each, and
    test_labels.csv is `labels`."""
    out_dir = Path(out_dir)
    if split not in SPLIT_CSVS:
        raise OkkhorError(f"split {split!r}: expected one of {', '.join(SPLIT_CSVS)}")
    if split == "train":
        return [write_csv(out_dir / "train.csv", labels)]
    components = sorted(targets)
    ids = [i for i in labels["image_id"] for _ in components]
    comps = components * len(labels)
    row_ids = [f"{i}_{c}" for i, c in zip(ids, comps, strict=False)]
    return [write_csv(out_dir / "test.csv", pd.DataFrame({"row_id": row_ids, "image_id": ids, "component": comps})),
            write_csv(out_dir / "sample_submission.csv", pd.DataFrame({"row_id": row_ids, "target": 0})),
            write_csv(out_dir / "test_labels.csv", labels)]


def class_map_frame(targets: Targets) -> pd.DataFrame:
    """class_map.csv rows (component_type,label,component) of `targets`; a label without a component name gets
    its number."""
    rows = []
    for name, n in zip(targets.names, targets.num_classes, strict=False):
        names = targets.components.get(name, ())
        rows += [(name, label, names[label] if label < len(names) else str(label)) for label in range(n)]
    return pd.DataFrame(rows, columns=list(CLASS_MAP_COLUMNS))
