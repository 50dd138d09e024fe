"""`okkhor cv`: fold runs, skipping finished folds, OOF probabilities and scores, predict and report of a cv folder."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import TINY_TRAIN, prepared_tiny
from okkhor.cli import app
from okkhor.config import load_config
from okkhor.data.folds import read_folds
from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache
from okkhor.errors import OkkhorError
from okkhor.inference.predict import ensemble_probs, load_members
from okkhor.io.labels import load_targets
from okkhor.metrics import hierarchical_recall
from okkhor.training.cv import parse_folds, run_cv

FAST = TINY_TRAIN
runner = CliRunner()


@pytest.fixture(scope="module")
def cv_run(tiny_kaggle_dir, tmp_path_factory):
    """Folds 0,1 of a 3-fold cv run, then the same command with folds 0,1,2 (as after a kill after fold 1)."""
    tiny = prepared_tiny(tiny_kaggle_dir, n_train=60, n_test=8)
    runs = tmp_path_factory.mktemp("cv") / "runs"
    cfg = load_config(None, FAST)
    first, second = [], []
    run_cv(tiny.root, runs, cfg, [0, 1], show_progress=False, log=first.append)
    stamps = {k: (runs / f"fold{k}" / "checkpoints" / "last.pt").stat().st_mtime_ns for k in (0, 1)}
    result = run_cv(tiny.root, runs, cfg, [0, 1, 2], show_progress=False, log=second.append)
    return tiny, runs, result, first, second, stamps


def test_second_run_skips_finished_folds_and_trains_the_rest(cv_run):
    tiny, runs, result, first, second, stamps = cv_run
    assert any(line.startswith("cv: fold 1 -> ") for line in first)
    assert not any("fold 2" in line for line in first)
    for k in (0, 1):
        assert any(line.startswith(f"cv: fold {k} has finished") and "skipped" in line for line in second)
        assert (runs / f"fold{k}" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamps[k]
    assert any(line.startswith("cv: fold 2 -> ") for line in second)
    assert not any(line.startswith("cv: fold 0 ->") or line.startswith("cv: fold 1 ->") for line in second)
    assert (runs / "fold2" / "checkpoints" / "best.pt").is_file()
    assert second[-1].startswith(f"cv: OOF score {result['oof_score']:.4f} over {len(tiny.train_ids)} images")


def test_oof_covers_every_image_once_and_scores_the_fold_predictions(cv_run):
    tiny, runs, result, _, _, _ = cv_run
    oof = np.load(runs / "oof.npz")
    ids = oof["image_ids"].tolist()
    assert sorted(ids) == sorted(tiny.train_ids) and len(ids) == len(set(ids))
    targets = load_targets(tiny.root)
    images, cache_ids = load_cache(default_cache_dir(tiny.root, PrepareOptions(32, True)), "train")
    folds = read_folds(tiny.root / "folds.csv", cache_ids)
    label_of = dict(zip(tiny.train_ids, tiny.train_labels.tolist(), strict=False))
    # independently: each fold's best.pt on its own validation rows, concatenated
    truth, preds, fold_ids = [], [], []
    for k in range(3):
        rows = np.flatnonzero(folds == k)
        members = load_members([runs / f"fold{k}" / "checkpoints" / "best.pt"], "cpu")
        p = ensemble_probs(members, {members[0].preprocessing: images}, rows=rows)
        preds.append(np.stack([p[n].argmax(1) for n in targets.names], axis=1))
        fold_ids += [cache_ids[r] for r in rows]
        truth.append(np.array([label_of[cache_ids[r]] for r in rows]))
        for name in targets.names:
            np.testing.assert_allclose(oof[name][oof["fold"] == k], p[name], rtol=1e-5, atol=1e-6)
    assert ids == fold_ids
    expected, _ = hierarchical_recall(np.concatenate(truth), np.concatenate(preds), targets)
    assert result["oof_score"] == pytest.approx(expected)
    table = pd.read_csv(runs / "cv.csv")
    assert table["fold"].astype(str).tolist() == ["0", "1", "2", "oof"]
    assert table["images"].tolist()[:3] == [int((folds == k).sum()) for k in range(3)]
    assert table["score"].iloc[-1] == pytest.approx(expected)


def test_predict_and_report_take_a_cv_folder(cv_run, tmp_path):
    tiny, runs, result, _, _, _ = cv_run
    sets = [a for kv in FAST for a in ("--set", kv)]
    res = runner.invoke(app, ["cv", "--data", str(tiny.root), "--out", str(runs), "--epochs", "1", *sets])
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == 3 and f"cv: OOF score {result['oof_score']:.4f}" in res.output
    res = runner.invoke(app, ["predict", str(runs), "--data", str(tiny.root), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "3 checkpoint(s)" in res.output
    res = runner.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["0", "1", "2", "oof"]
    assert f"{result['oof_score']:.4f}" in lines[4]
    assert (runs / "report.html").is_file()


def test_parse_folds():
    assert parse_folds(None, 5) == [0, 1, 2, 3, 4]
    assert parse_folds("2,0", 5) == [2, 0]
    for bad in ("5", "a", "1,1"):
        with pytest.raises(OkkhorError, match="--folds"):
            parse_folds(bad, 5)


def test_a_fold_interrupted_mid_run_is_resumed_not_restarted(tiny_kaggle_dir, tmp_path):
    """A fold stopped after epoch 1 of 2 (as a kill after its first save leaves it) continues from its last.pt."""
    import pandas as pd

    from okkhor.training import testing

    tiny = prepared_tiny(tiny_kaggle_dir, n_train=60, n_test=8)
    cfg = load_config(None, FAST + ["train.epochs=2"])
    fold_cfg = load_config(None, FAST + ["train.epochs=2", "data.fold=1"])
    runs = tmp_path / "runs"
    testing.train(tiny.root, runs / "fold1", fold_cfg, show_progress=False, log=lambda m: None, stop_after=1)
    first = pd.read_csv(runs / "fold1" / "metrics.csv")
    lines: list[str] = []
    result = run_cv(tiny.root, runs, cfg, [1], show_progress=False, log=lines.append)
    assert any(line.startswith("cv: fold 1 (resuming) -> ") for line in lines), lines
    assert any("resuming after epoch 1" in line for line in lines), lines
    after = pd.read_csv(runs / "fold1" / "metrics.csv")
    assert sorted(after["epoch"].unique()) == [1, 2]
    pd.testing.assert_frame_equal(after[after["epoch"] == 1].reset_index(drop=True),
                                  first[first["epoch"] == 1].reset_index(drop=True))  # epoch 1 was not retrained
    assert set(result["folds"]) == {1}


def test_cv_over_two_sources_holds_out_fold_k_of_each(tiny_kaggle_dir, tmp_path):
    """Two sources (image ids shared between them): each fold run validates on both; cv.csv has the rows of each
    source, whose images are that source's fold k, and oof.npz tells the sources apart."""
    a = prepared_tiny(tiny_kaggle_dir, n_train=30, n_test=0, seed=4)
    b = prepared_tiny(tiny_kaggle_dir, n_train=36, n_test=0, seed=5)
    runs = tmp_path / "runs"
    lines: list[str] = []
    result = run_cv([a.root, b.root], runs, load_config(None, FAST), [0, 1], show_progress=False, log=lines.append)
    table = pd.read_csv(runs / "cv.csv")
    assert list(table.columns[:2]) == ["source", "fold"]
    assert list(zip(table["source"], table["fold"].astype(str), strict=True)) == [
        (a.root.name, "0"), (a.root.name, "1"), (a.root.name, "oof"),
        (b.root.name, "0"), (b.root.name, "1"), (b.root.name, "oof")]
    oof = np.load(runs / "oof.npz")
    for data in (a, b):
        _, cache_ids = load_cache(default_cache_dir(data.root, PrepareOptions(32, True)), "train")
        folds = read_folds(data.root / "folds.csv", cache_ids)
        rows = table[table["source"] == data.root.name]
        assert rows["images"].tolist()[:2] == [int((folds == k).sum()) for k in (0, 1)]
        mine = oof["source"] == data.root.name
        expected = [cache_ids[r] for k in (0, 1) for r in np.flatnonzero(folds == k)]
        assert oof["image_ids"][mine].tolist() == expected
        assert result["sources"][data.root.name]["oof_score"] == pytest.approx(float(rows["score"].iloc[-1]))
    assert result["oof_score"] == result["sources"][a.root.name]["oof_score"]   # the first source's
    assert lines[-1].startswith(f"cv: OOF score {result['oof_score']:.4f} on {a.root.name} ")
