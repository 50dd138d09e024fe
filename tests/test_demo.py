"""The demo's chain at toy size: its last line has the fields scripts read, and F is the held-out family's score."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from okkhor import demo
from okkhor.inference.scoring import submission_labels
from okkhor.metrics import hierarchical_recall
from okkhor.targets import Targets


def test_demo_line_and_new_font_score(tmp_path):
    lines = []
    params = {"train": 320, "test": 120, "holdout_share": 0.5}
    summary = demo.run(tmp_path, ("data.image_size=32", "model.name=test_resnet", "train.epochs=1",
                                  "eval.train_clean_size=32"), params=params, log=lines.append)
    last = lines[-1]
    pattern = (r"^demo: score (\d\.\d{4}) \(seen (\d\.\d{4}), unseen (\d\.\d{4}); new fonts (\d\.\d{4})\) "
               r"in \d+s; report: (.+report\.html)$")
    match = re.match(pattern, last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(summary["score"], abs=5e-5)
    labels = pd.read_csv(tmp_path / "data" / "test_labels.csv")
    assert set(labels.loc[~labels["font_seen"], "font"]) == {demo.DEMO["holdout_fonts"]}
    assert (~labels["font_seen"]).mean() == pytest.approx(0.5, abs=0.02)
    targets = Targets.from_class_map()
    pred = submission_labels(tmp_path / "submission.csv", labels["image_id"].tolist(), targets.names)
    truth = labels[list(targets.names)].to_numpy()
    new = (~labels["font_seen"]).to_numpy()
    seen_train_fonts = (labels["seen"] & labels["font_seen"]).to_numpy()
    assert summary["new_fonts"] == pytest.approx(hierarchical_recall(truth[new], pred[new], targets)[0])
    assert summary["seen"] == pytest.approx(
        hierarchical_recall(truth[seen_train_fonts], pred[seen_train_fonts], targets)[0])
    assert json.loads((tmp_path / "demo.json").read_text())["new_fonts"] == summary["new_fonts"]
    assert "By group" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
