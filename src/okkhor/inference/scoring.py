"""Scoring a Kaggle submission against a labels file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from okkhor.errors import OkkhorError
from okkhor.io.labels import load_targets, read_submission, read_train_labels
from okkhor.metrics import GROUP_COLUMNS, by_groups, summary

_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def group_columns(df, path: Path) -> dict[str, np.ndarray]:
    """The boolean group columns (`seen`, `font_seen`) a labels frame carries, parsed; a bad value is one error."""
    out = {}
    for name in GROUP_COLUMNS:
        if name in df.columns:
            values = []
            for v in df[name]:
                key = str(v).strip().lower()
                if key not in _BOOLEANS:
                    raise OkkhorError(f"{path}: column {name} has a non-boolean value {v!r}")
                values.append(_BOOLEANS[key])
            out[name] = np.array(values, dtype=bool)
    return out


def submission_labels(sub_path: Path, image_ids: list[str], names: tuple[str, ...]) -> np.ndarray:
    """Predicted labels [n, T] for image_ids from a submission; every row_id must be present, none unknown."""
    sub = read_submission(sub_path)
    expected = {f"{i}_{t}" for i in image_ids for t in names}
    got = set(sub["row_id"].astype(str))
    unknown = got - expected
    if unknown:
        raise OkkhorError(f"{sub_path}: unknown row_id {sorted(unknown)[0]} ({len(unknown)} unknown)")
    missing = expected - got
    if missing:
        raise OkkhorError(f"{sub_path}: missing row_id {sorted(missing)[0]} ({len(missing)} missing)")
    lookup = dict(zip(sub["row_id"].astype(str), sub["target"].astype(np.int64), strict=False))
    return np.array([[lookup[f"{i}_{t}"] for t in names] for i in image_ids], dtype=np.int64)


def score_submission(truth: str | Path, submission: str | Path, class_map: str | Path | None = None) -> dict:
    """summary() of the whole set ({"images", "score", "recall", "accuracy", "exact"}), plus by_groups()'s "by_seen"
    and "by_cell" when the truth has `seen` / `font_seen` columns."""
    truth, submission = Path(truth), Path(submission)
    targets = load_targets(truth.parent, str(class_map or ""))
    df, y_true = read_train_labels(truth, targets)
    y_pred = submission_labels(submission, df["image_id"].astype(str).tolist(), targets.names)
    return {**summary(y_true, y_pred, targets), **by_groups(y_true, y_pred, targets, group_columns(df, truth))}


def format_summary(result: dict) -> list[str]:
    """Text lines of a summary() (+ by_groups()) result: score, recall and accuracy per target, exact, cells."""
    lines = [f"score {result['score']:.5f} on {result['images']} images"]
    for name, r in result["recall"].items():
        lines.append(f"  recall {name}: {r:.5f}  accuracy {result['accuracy'][name]:.5f}")
    lines.append(f"  exact (all targets right): {result['exact']:.5f}")
    for column in ("by_seen", "by_font_seen"):
        for part, value in result.get(column, {}).items():
            lines.append(f"  {part}: {value:.5f}" if value is not None else f"  {part}: (no rows)")
    for cell, value in result.get("by_cell", {}).items():
        lines.append(f"  cell {cell}: (no rows)" if value is None else
                     f"  cell {cell}: score {value['score']:.5f}, exact {value['exact']:.5f} "
                     f"on {value['images']} images")
    return lines
