"""Scoring a Kaggle submission against a labels file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from okkhor.data.kaggle import load_targets, read_submission, read_train_labels
from okkhor.errors import OkkhorError
from okkhor.metrics import hierarchical_recall


def _parse_seen(values, path: Path) -> np.ndarray:
    mapping = {"true": True, "false": False, "1": True, "0": False}
    out = []
    for v in values:
        key = str(v).strip().lower()
        if key not in mapping:
            raise OkkhorError(f"{path}: column seen has a non-boolean value {v!r}")
        out.append(mapping[key])
    return np.array(out, dtype=bool)


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
    lookup = dict(zip(sub["row_id"].astype(str), sub["target"].astype(np.int64)))
    return np.array([[lookup[f"{i}_{t}"] for t in names] for i in image_ids], dtype=np.int64)


def score_submission(truth: str | Path, submission: str | Path, class_map: str | Path | None = None) -> dict:
    """{"score", "recall": {target: r}, and "by_seen": {"seen", "unseen"} when the truth has a `seen` column}."""
    truth, submission = Path(truth), Path(submission)
    targets = load_targets(truth.parent, str(class_map or ""))
    df, y_true = read_train_labels(truth, targets)
    y_pred = submission_labels(submission, df["image_id"].astype(str).tolist(), targets.names)
    score, recalls = hierarchical_recall(y_true, y_pred, targets)
    result: dict = {"score": score, "recall": recalls}
    if "seen" in df.columns:
        seen = _parse_seen(df["seen"], truth)
        result["by_seen"] = {
            part: (hierarchical_recall(y_true[mask], y_pred[mask], targets)[0] if mask.any() else None)
            for part, mask in (("seen", seen), ("unseen", ~seen))
        }
    return result
