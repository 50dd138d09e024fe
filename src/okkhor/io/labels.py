"""The Bengali.AI competition file format, its CSVs: labels (train.csv), test.csv, the class map's targets and
submissions (okkhor.io.kaggle: the image parquet files)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.utils.files import write_csv_atomic


def read_csv_checked(path: str | Path, required: Sequence[str], what: str = "CSV") -> pd.DataFrame:
    """Read a CSV and fail with one line naming the file and the missing columns."""
    path = Path(path)
    if not path.is_file():
        raise OkkhorError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype={"grapheme": str, "component": str}, keep_default_na=False)
    except Exception as exc:
        raise OkkhorError(f"{path}: cannot read {what} ({str(exc).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise OkkhorError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def integer_column(df: pd.DataFrame, name: str, path: str | Path) -> np.ndarray:
    """Column `name` as int64; fail naming the file, column, value and CSV row when a value is not an integer."""
    col = pd.to_numeric(df[name], errors="coerce")
    bad = col.isna() | (col != col.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise OkkhorError(f"{path}: column {name} has a non-integer value {df[name].iloc[row]!r} (row {row + 2})")
    return col.to_numpy().astype(np.int64)


def check_labels(df: pd.DataFrame, targets: Targets, path: str | Path) -> np.ndarray:
    """Return labels int64 [n, n_targets]; fail naming the column when a value is not an integer in range."""
    out = np.empty((len(df), len(targets)), dtype=np.int64)
    for t, (name, n) in enumerate(zip(targets.names, targets.num_classes, strict=False)):
        values = integer_column(df, name, path)
        out_of_range = (values < 0) | (values >= n)
        if out_of_range.any():
            row = int(np.flatnonzero(out_of_range)[0])
            raise OkkhorError(f"{path}: column {name} has label {values[row]} outside the class map 0..{n - 1} "
                              f"(row {row + 2})")
        out[:, t] = values
    return out


def read_train_labels(path: str | Path, targets: Targets) -> tuple[pd.DataFrame, np.ndarray]:
    """train.csv (or any labels CSV): image_id + one column per target. Returns the frame and int labels."""
    df = read_csv_checked(path, ["image_id", *targets.names], "labels CSV")
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise OkkhorError(f"{path}: duplicate image_id {dup}")
    return df, check_labels(df, targets, path)


def read_test_csv(path: str | Path, targets: Targets) -> pd.DataFrame:
    """test.csv: row_id,image_id,component."""
    df = read_csv_checked(path, ["row_id", "image_id", "component"], "test CSV")
    unknown = sorted(set(df["component"]) - set(targets.names))
    if unknown:
        raise OkkhorError(f"{path}: column component has unknown target(s) {', '.join(map(str, unknown))}")
    return df


def load_targets(data_dir: str | Path | None, class_map: str = "", names: Sequence[str] = (),
                 weights: Sequence[float] | None = None) -> Targets:
    """Targets of a data dir: an explicit class map, else DATA_DIR/class_map.csv, else the built-in Bengali map."""
    path: Path | None = None
    if class_map:
        path = Path(class_map)
    elif data_dir is not None and (Path(data_dir) / "class_map.csv").is_file():
        path = Path(data_dir) / "class_map.csv"
    targets = Targets.from_class_map(path)
    if names:
        unknown = [n for n in names if n not in targets.names]
        if unknown:
            raise OkkhorError(f"config: data.targets names {', '.join(unknown)} not in the class map "
                              f"({', '.join(targets.names)})")
        idx = [targets.names.index(n) for n in names]
        targets = Targets.make([targets.names[i] for i in idx], [targets.num_classes[i] for i in idx], weights,
                               {n: targets.components[n] for n in names if n in targets.components})
    elif weights:
        targets = Targets.make(targets.names, targets.num_classes, weights, targets.components)
    return targets


def write_submission(path: str | Path, row_ids: Sequence[str], values: Sequence[int]) -> None:
    """Write `row_id,target` atomically."""
    write_csv_atomic(path, pd.DataFrame({"row_id": list(row_ids), "target": np.asarray(values, dtype=np.int64)}))


def read_submission(path: str | Path) -> pd.DataFrame:
    """A Kaggle submission `row_id,target`; targets must be integers, row_ids unique."""
    df = read_csv_checked(path, ["row_id", "target"], "submission")
    if df["row_id"].duplicated().any():
        raise OkkhorError(f"{path}: duplicate row_id {df.loc[df['row_id'].duplicated(), 'row_id'].iloc[0]}")
    df["target"] = integer_column(df, "target", path)
    return df
