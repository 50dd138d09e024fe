"""okkhor evaluate: metrics.json and plots, and its score equals `okkhor score` on the same predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import assert_one_line_error, cli, make_checkpoint
from okkhor.data.folds import split
from okkhor.inference.evaluate import confused_pairs, summarize
from okkhor.io.labels import load_targets
from okkhor.targets import Targets


def score_json(truth, submission) -> dict:
    code, out = cli("score", "--truth", truth, "--submission", submission, "--json")
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_perfect_submission_scores_one(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir()
    truth = pd.read_csv(data.root / "test_labels.csv")
    rows = [(f"{i}_{name}", int(v)) for i, *values in truth.itertuples(index=False)
            for name, v in zip(truth.columns[1:], values, strict=False)]
    pd.DataFrame(rows, columns=["row_id", "target"]).to_csv(tmp_path / "perfect.csv", index=False)
    result = score_json(data.root / "test_labels.csv", tmp_path / "perfect.csv")
    assert result["score"] == 1.0
    assert all(r == 1.0 for r in result["recall"].values())


def test_evaluate_fold_matches_score_cli(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir(copy=True)
    split(data.root, load_targets(data.root), folds=4, seed=1)
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", data.root, seed=3, fold=1)
    code, out = cli("evaluate", ckpt, "--data", data.root)
    assert code == 0, out
    ev_dir = tmp_path / "run" / "eval-best"          # the default: RUN_DIR/eval-<checkpoint name>
    metrics = json.loads((ev_dir / "metrics.json").read_text())
    assert metrics["source"] == "fold 1"
    folds = pd.read_csv(data.root / "folds.csv")
    assert metrics["images"] == int((folds["fold"] == 1).sum())
    for name, n in zip(data.names, data.num_classes, strict=False):
        assert len(metrics["per_class_recall"][name]) == n
        assert sum(metrics["support"][name]) == metrics["images"]
        assert (ev_dir / f"recall_{name}.png").stat().st_size > 1000
        assert (ev_dir / f"confusion_{name}.png").stat().st_size > 1000
    result = score_json(ev_dir / "truth.csv", ev_dir / "submission.csv")
    assert result["score"] == pytest.approx(metrics["score"], abs=1e-12)
    assert result["recall"] == pytest.approx(metrics["recall"], abs=1e-12)
    assert f"score {metrics['score']:.5f}" in out


def test_evaluate_labels_matches_score_cli(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir()
    labels = pd.read_csv(data.root / "test_labels.csv")
    labels["seen"] = np.arange(len(labels)) % 2 == 0
    labels["font_seen"] = np.arange(len(labels)) % 3 != 0
    labels.to_csv(tmp_path / "labels.csv", index=False)
    ckpt = make_checkpoint(tmp_path / "c.pt", data.root, seed=4)
    code, out = cli("evaluate", ckpt, "--data", data.root, "--labels", tmp_path / "labels.csv",
                    "--out", tmp_path / "ev")
    assert code == 0, out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == len(data.test_ids)
    result = score_json(tmp_path / "labels.csv", tmp_path / "ev" / "submission.csv")
    assert result["score"] == pytest.approx(metrics["score"], abs=1e-12)
    # the breakdown, accuracy and exact share are the same function's in evaluate and score
    for key in ("by_seen", "by_cell", "accuracy", "exact"):
        assert result[key] == pytest.approx(metrics[key]) if key != "by_cell" else result[key] == metrics[key]
    assert sum(v["images"] for v in metrics["by_cell"].values() if v) == len(data.test_ids)
    assert "cell seen/font_unseen" in out


def test_summary_and_confused_pairs():
    targets = Targets.make(["a", "b"], [3, 2])
    y_true = np.array([[0, 0], [0, 1], [1, 1], [1, 0], [1, 1]])
    y_pred = np.array([[0, 0], [2, 1], [2, 1], [2, 0], [1, 0]])
    m = summarize(y_true, y_pred, targets)
    assert m["per_class_recall"]["a"] == [0.5, 1 / 3, None]
    assert m["support"]["a"] == [2, 3, 0]
    assert m["confused_pairs"]["a"] == [{"true": 1, "pred": 2, "count": 2, "share": 2 / 3},
                                        {"true": 0, "pred": 2, "count": 1, "share": 0.5}]
    # class 2 is only predicted: it counts in the macro mean with recall 0, as in sklearn and `okkhor score`
    assert m["recall"]["a"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    assert confused_pairs(np.array([0, 1]), np.array([0, 1]), 2) == []


def test_evaluate_errors(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir()
    ckpt = make_checkpoint(tmp_path / "c.pt", data.root)
    assert_one_line_error(*cli("evaluate", ckpt, "--data", data.root, "--fold", 0, "--labels",
                               data.root / "test_labels.csv"), "exclude")
    assert_one_line_error(*cli("evaluate", ckpt, "--data", data.root, "--out", tmp_path / "ev"),
                          "folds.csv", "okkhor split")
    assert_one_line_error(*cli("evaluate", tmp_path / "missing.pt", "--data", data.root), "checkpoint not found")
