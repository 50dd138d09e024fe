"""okkhor report: one offline page whose every src/href exists, with the curves, recall, confusions and mistakes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import assert_one_line_error, cli, make_checkpoint
from okkhor.config import Config
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.reporting.report import resolve_data_dir


def fake_run(run: Path, data_dir: Path, names, epochs: int = 4, **ckpt_kwargs) -> Path:
    """A run directory as the trainer leaves it: config.yaml, metrics.csv and checkpoints/best.pt."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(Config().to_yaml(), encoding="utf-8")
    rows = []
    for epoch in range(1, epochs + 1):
        for split_name, offset in (("train_clean", 0.05), ("valid", 0.0)):
            score = min(1.0, 0.2 * epoch + offset)
            rows.append({"epoch": epoch, "split": split_name, "loss": 2.0 / epoch + offset, "score": score,
                         **{f"recall_{n}": score for n in names}, "lr": 1e-3 / epoch, "seconds": 1.5})
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    make_checkpoint(run / "checkpoints" / "best.pt", data_dir, **ckpt_kwargs)
    return run


def references(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)


def test_report_of_a_real_tiny_run(tiny_kaggle_dir, tmp_path):
    """Integration: `okkhor train` on tiny data, then the report; its evaluation matches the trainer's best."""
    from okkhor.config import load_config
    from okkhor.training.train import train

    # the built-in Bengali map, so graphemes can be drawn; no test images are needed
    data = tiny_kaggle_dir(copy=True, classes=None, n_train=48, n_test=0)
    cfg = load_config(None, ["data.image_size=32", "model.name=test_resnet", "train.epochs=2",
                             "train.batch_size=16", "data.workers=0", "data.folds=4", "eval.train_clean_size=16",
                             "train.lr=3e-3"])
    run = tmp_path / "run"
    train(data.root, run, cfg, show_progress=False, log=lambda message: None)
    code, out = cli("report", run, "--data", data.root, "--gallery", 6)
    assert code == 0, out
    page = (run / "report.html").read_text(encoding="utf-8")
    refs = references(page)
    assert refs, page
    for ref in refs:
        assert not re.match(r"^[a-z]+:", ref), f"external reference {ref}"
        assert (run / ref).is_file(), f"{ref} referenced but missing"
    assert "<script" not in page.lower()
    assert "report/curves.png" in refs and (run / "report" / "curves.png").stat().st_size > 5000
    for name in data.names:
        assert f"report/recall_{name}.png" in refs and f"report/confusion_{name}.png" in refs
    mistakes = [r for r in refs if "mistake_" in r]
    assert 1 <= len(mistakes) <= 6
    assert "Training curves" in page and "Most confused pairs" in page and "Misclassified" in page
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert f"{metrics['score']:.4f}" in page
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert metrics["score"] == pytest.approx(best["run"]["best_score"], abs=1e-9)


def test_report_without_data_dir_is_one_clear_error(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir()
    run = fake_run(tmp_path / "run", data.root, data.names, record_data_dir=False)
    assert_one_line_error(*cli("report", run), "data directory is unknown", "--data")
    assert_one_line_error(*cli("report", tmp_path / "nothing"), "run directory not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*cli("report", tmp_path / "empty"), "not a run directory")


def test_data_dir_resolution_order(tmp_path):
    run, a, b = tmp_path / "run", tmp_path / "a", tmp_path / "b"
    for p in (run, a, b):
        p.mkdir()
    assert resolve_data_dir(run, a, {"data": checkpoint.data_record({}, b)}) == a
    assert resolve_data_dir(run, None, {"data": checkpoint.data_record({}, b)}) == b
    (run / "run.json").write_text(json.dumps({"data_dir": str(a)}))
    assert resolve_data_dir(run, None, {}) == a
    with pytest.raises(OkkhorError, match="data directory not found"):
        resolve_data_dir(run, None, {"data": checkpoint.data_record({}, tmp_path / "gone")})


def test_report_on_labels_with_groups_has_the_cells_table(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir(copy=True)
    labels = pd.read_csv(data.root / "test_labels.csv")
    labels["seen"] = [i % 2 == 0 for i in range(len(labels))]
    labels["font_seen"] = [i % 3 != 0 for i in range(len(labels))]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    run = fake_run(tmp_path / "run", data.root, data.names)
    code, out = cli("report", run, "--data", data.root, "--labels", tmp_path / "labels.csv", "--gallery", 4)
    assert code == 0, out
    page = (run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["source"] == str(tmp_path / "labels.csv")
    assert "By group" in page
    for cell, value in metrics["by_cell"].items():
        assert f"<td>{cell}</td><td>{value['images']}</td><td>{value['score']:.4f}</td>" in page


def test_curves_and_best_rows_per_source_of_a_run_of_several():
    """metrics.csv of a run of two sources: a valid curve and best/last rows for each source."""
    from okkhor.reporting.report import _best_rows, curve_groups

    rows = []
    for epoch in (1, 2, 3):
        rows.append({"epoch": epoch, "split": "train", "source": None, "loss": 1.0, "score": None, "seconds": 5.0})
        for source, scores in (("real", (0.5, 0.7, 0.6)), ("synth", (0.8, 0.6, 0.9))):
            rows.append({"epoch": epoch, "split": "valid", "source": source, "loss": 1.0,
                         "score": scores[epoch - 1], "seconds": 6.0 + 2 * (source == "synth")})
    metrics = pd.DataFrame(rows)
    groups = {label: group for _, label, group in curve_groups(metrics)}
    assert set(groups) == {"train", "valid real", "valid synth"}
    assert groups["valid synth"]["score"].tolist() == [0.8, 0.6, 0.9]
    table = _best_rows(metrics)
    best = re.findall(r"<th>best valid (\w+)</th><td>(\d)</td>", table)
    assert best == [("real", "2"), ("synth", "3")]
    assert "time recorded: 0.4 min" in table   # 8 s an epoch: each epoch's last row, not the sum of all rows
    one = metrics[metrics["source"] != "synth"]
    assert [label for _, label, _ in curve_groups(one)] == ["train", "valid"]   # one source: the plain labels
