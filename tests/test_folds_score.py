"""Folds (multilabel stratified), `okkhor split` and `okkhor score`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from okkhor.cli import app
from okkhor.data.folds import make_folds, stratified_subset
from okkhor.targets import Targets

runner = CliRunner()
BENGALI = Targets.from_class_map()


def skewed_labels(n, seed=0):
    rng = np.random.default_rng(seed)
    roots = rng.choice(20, n, p=np.linspace(1, 3, 20) / np.linspace(1, 3, 20).sum())
    return np.stack([roots, rng.integers(0, 11, n), rng.choice(7, n, p=[.6, .1, .1, .05, .05, .05, .05])], 1)


def worst_fold_deviation(labels, fold, folds=5):
    """Per (target, fold): the largest gap between a fold's class frequency and the overall one; mean and max."""
    gaps = []
    for t, n in enumerate(BENGALI.num_classes):
        overall = np.bincount(labels[:, t], minlength=n) / len(labels)
        for k in range(folds):
            part = labels[fold == k, t]
            gaps.append(np.abs(np.bincount(part, minlength=n) / len(part) - overall).max())
    return float(np.mean(gaps)), float(np.max(gaps))


def test_folds_cover_every_image_once_and_keep_class_frequencies():
    labels = skewed_labels(2000)
    fold = make_folds(labels, BENGALI, folds=5, seed=42)
    assert fold.shape == (2000,) and set(fold) == {0, 1, 2, 3, 4}
    assert np.all(np.bincount(fold) >= 390)
    mean_gap, max_gap = worst_fold_deviation(labels, fold)
    random_fold = np.random.default_rng(0).permutation(np.arange(2000) % 5)
    random_mean, random_max = worst_fold_deviation(labels, random_fold)
    # measured: stratified 0.009 mean / 0.024 max vs random 0.026 / 0.053
    assert mean_gap < 0.5 * random_mean and max_gap < 0.03
    assert np.array_equal(fold, make_folds(labels, BENGALI, folds=5, seed=42))


def test_stratified_subset():
    labels = skewed_labels(1000)
    idx = stratified_subset(labels, BENGALI, 200, seed=0)
    assert len(idx) == 200 and len(set(idx)) == 200 and np.all(np.diff(idx) > 0)
    assert len(stratified_subset(labels, BENGALI, 0)) == 1000


def write_truth(path, n=40, seen=True, seed=0):
    labels = skewed_labels(n, seed)
    df = pd.DataFrame({"image_id": [f"Test_{i}" for i in range(n)], "grapheme_root": labels[:, 0],
                       "vowel_diacritic": labels[:, 1], "consonant_diacritic": labels[:, 2],
                       "grapheme": "x"})
    if seen:
        df["seen"] = np.arange(n) % 4 != 0
    df.to_csv(path, index=False)
    return df


def write_sub(path, df, corrupt=0):
    rows = []
    for k, r in enumerate(df.itertuples()):
        for comp in ("consonant_diacritic", "grapheme_root", "vowel_diacritic"):
            value = getattr(r, comp)
            if corrupt and k < corrupt and comp == "grapheme_root":
                value = (value + 1) % 168
            rows.append((f"{r.image_id}_{comp}", value))
    pd.DataFrame(rows, columns=["row_id", "target"]).to_csv(path, index=False)


def score(*args):
    r = runner.invoke(app, ["score", *map(str, args)])
    return r.exit_code, r.output


def test_split_cli_writes_folds(tmp_path):
    n = 60
    labels = skewed_labels(n)
    pd.DataFrame({"image_id": [f"Train_{i}" for i in range(n)], "grapheme_root": labels[:, 0],
                  "vowel_diacritic": labels[:, 1], "consonant_diacritic": labels[:, 2]}
                 ).to_csv(tmp_path / "train.csv", index=False)
    r = runner.invoke(app, ["split", str(tmp_path), "--folds", "3", "--seed", "1"])
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert list(folds.columns) == ["image_id", "fold"]
    assert sorted(folds["image_id"]) == sorted(f"Train_{i}" for i in range(n))
    assert set(folds["fold"]) == {0, 1, 2}


def test_perfect_submission_scores_one(tmp_path):
    df = write_truth(tmp_path / "labels.csv")
    write_sub(tmp_path / "sub.csv", df)
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["score"] == 1.0
    assert result["recall"] == {"grapheme_root": 1.0, "vowel_diacritic": 1.0, "consonant_diacritic": 1.0}
    assert result["by_seen"] == {"seen": 1.0, "unseen": 1.0}


def test_imperfect_submission_and_text_output(tmp_path):
    df = write_truth(tmp_path / "labels.csv", seen=False)
    write_sub(tmp_path / "sub.csv", df, corrupt=10)
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv", "--json")
    result = json.loads(out)
    assert result["recall"]["vowel_diacritic"] == 1.0 and result["recall"]["grapheme_root"] < 1.0
    assert result["score"] == pytest.approx((2 * result["recall"]["grapheme_root"] + 2) / 4)
    assert "by_seen" not in result
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv")
    assert code == 0 and out.startswith("score 0.") and "recall grapheme_root" in out


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s.iloc[1:], "missing row_id"),
    (lambda s: pd.concat([s, pd.DataFrame({"row_id": ["Test_999_grapheme_root"], "target": [1]})]), "unknown row_id"),
    (lambda s: pd.concat([s, s.iloc[:1]]), "duplicate row_id"),
    (lambda s: s.assign(target=s["target"].astype(str).where(s.index != 3, "abc")), "non-integer"),
    (lambda s: s.rename(columns={"target": "label"}), "target"),
])
def test_bad_submissions(tmp_path, mutate, needle):
    df = write_truth(tmp_path / "labels.csv")
    write_sub(tmp_path / "sub.csv", df)
    mutate(pd.read_csv(tmp_path / "sub.csv")).to_csv(tmp_path / "sub.csv", index=False)
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv")
    assert_one_line_error(code, out, "sub.csv", needle)


def test_missing_truth_file(tmp_path):
    code, out = score("--truth", tmp_path / "nope.csv", "--submission", tmp_path / "sub.csv")
    assert_one_line_error(code, out, "nope.csv", "not found")


def hand_recall(t, p):
    """Macro recall written out: per class present in truth or prediction, hits / support (0 without support)."""
    classes = sorted(set(t) | set(p))
    return sum((sum(1 for a, b in zip(t, p, strict=False) if a == b == c) / max(sum(1 for a in t if a == c), 1))
               for c in classes) / len(classes)


def test_by_cell_accuracy_and_exact_equal_a_hand_computation(tmp_path):
    n = 48
    df = write_truth(tmp_path / "labels.csv", n=n)
    df["font"] = np.where(np.arange(n) % 3 == 0, "held-out-family", "train-family")
    df["font_seen"] = np.arange(n) % 3 != 0
    df.to_csv(tmp_path / "labels.csv", index=False)
    write_sub(tmp_path / "sub.csv", df, corrupt=20)
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("row_id")["target"]
    pred = {c: [int(sub[f"{i}_{c}"]) for i in df["image_id"]] for c in BENGALI.names}
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv", "--json")
    assert code == 0, out
    result = json.loads(out)
    rows = list(range(n))
    right = {c: [df[c][i] == pred[c][i] for i in rows] for c in BENGALI.names}
    assert result["accuracy"]["grapheme_root"] == pytest.approx(sum(right["grapheme_root"]) / n)
    assert result["accuracy"]["vowel_diacritic"] == 1.0
    assert result["exact"] == pytest.approx(sum(all(right[c][i] for c in BENGALI.names) for i in rows) / n)
    assert set(result["by_cell"]) == {"seen/font_seen", "seen/font_unseen", "unseen/font_seen",
                                      "unseen/font_unseen"}
    for cell, value in result["by_cell"].items():
        seen_part, font_part = cell.split("/")
        members = [i for i in rows if df["seen"][i] == (seen_part == "seen")
                   and df["font_seen"][i] == (font_part == "font_seen")]
        assert value["images"] == len(members) > 0
        recalls = [hand_recall([df[c][i] for i in members], [pred[c][i] for i in members]) for c in BENGALI.names]
        assert value["score"] == pytest.approx((2 * recalls[0] + recalls[1] + recalls[2]) / 4)
        assert value["accuracy"]["grapheme_root"] == pytest.approx(
            sum(right["grapheme_root"][i] for i in members) / len(members))
        assert value["exact"] == pytest.approx(
            sum(all(right[c][i] for c in BENGALI.names) for i in members) / len(members))
    assert result["by_cell"]["seen/font_seen"]["score"] < 1.0  # the corrupted first 20 rows reach every cell
    for value, part in ((True, "font_seen"), (False, "font_unseen")):
        members = [i for i in rows if df["font_seen"][i] == value]
        recalls = [hand_recall([df[c][i] for i in members], [pred[c][i] for i in members]) for c in BENGALI.names]
        assert result["by_font_seen"][part] == pytest.approx((2 * recalls[0] + recalls[1] + recalls[2]) / 4)
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv")
    assert code == 0 and "cell unseen/font_unseen: score" in out and "exact (all targets right)" in out


def test_a_cell_without_rows_is_none(tmp_path):
    df = write_truth(tmp_path / "labels.csv", n=20)
    df["font_seen"] = True
    df.to_csv(tmp_path / "labels.csv", index=False)
    write_sub(tmp_path / "sub.csv", df)
    result = json.loads(score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv", "--json")[1])
    assert result["by_cell"]["seen/font_unseen"] is None and result["by_cell"]["seen/font_seen"]["score"] == 1.0


def test_bad_font_seen_value_is_one_line(tmp_path):
    df = write_truth(tmp_path / "labels.csv", n=8)
    df["font_seen"] = ["maybe"] * 8
    df.to_csv(tmp_path / "labels.csv", index=False)
    write_sub(tmp_path / "sub.csv", df)
    code, out = score("--truth", tmp_path / "labels.csv", "--submission", tmp_path / "sub.csv")
    assert_one_line_error(code, out, "labels.csv", "font_seen")


def test_grouped_folds_never_split_a_triple():
    from okkhor.data.folds import make_group_folds

    rng = np.random.default_rng(3)
    triples = np.stack([rng.integers(0, 30, 120), rng.integers(0, 11, 120), rng.integers(0, 7, 120)], 1)
    labels = triples[rng.integers(0, 120, 3000)]  # 3,000 images of at most 120 distinct triples
    fold = make_group_folds(labels, BENGALI, folds=5, seed=1)
    assert set(fold) == {0, 1, 2, 3, 4}
    folds_of = {}
    for row, k in zip(map(tuple, labels), fold, strict=False):
        folds_of.setdefault(row, set()).add(int(k))
    assert all(len(ks) == 1 for ks in folds_of.values())
    sizes = np.bincount(fold)
    assert sizes.min() > 0.5 * sizes.max()  # groups are spread, not one fold of everything
    assert np.array_equal(fold, make_group_folds(labels, BENGALI, folds=5, seed=1))
    # plain stratified folds do split triples: the grouping is what keeps them whole
    plain = make_folds(labels, BENGALI, folds=5, seed=1)
    assert any(len({int(k) for k in plain[(labels == t).all(1)]}) > 1 for t in map(np.array, folds_of))


def test_split_cli_group_grapheme(tmp_path):
    n = 90
    labels = skewed_labels(30)[np.arange(n) % 30]
    pd.DataFrame({"image_id": [f"Train_{i}" for i in range(n)], "grapheme_root": labels[:, 0],
                  "vowel_diacritic": labels[:, 1], "consonant_diacritic": labels[:, 2]}
                 ).to_csv(tmp_path / "train.csv", index=False)
    r = runner.invoke(app, ["split", str(tmp_path), "--folds", "3", "--group", "grapheme"])
    assert r.exit_code == 0, r.output
    fold = pd.read_csv(tmp_path / "folds.csv")["fold"].to_numpy()
    for k in range(30):
        assert len(set(fold[np.arange(n) % 30 == k])) == 1
    r = runner.invoke(app, ["split", str(tmp_path), "--group", "writer"])
    assert_one_line_error(r.exit_code, r.output, "--group", "grapheme")


def test_split_cli_group_grapheme_on_a_small_set_gives_grouped_folds_with_a_note(tmp_path):
    """300 images over 150 roots (2 each): no root has 4 images, so StratifiedGroupKFold cannot stratify 4 folds.
    The split is grouped anyway, says so in one line, and keeps every triple in one fold."""
    n = 300
    rng = np.random.default_rng(5)
    labels = np.stack([np.arange(n) % 150, rng.integers(0, 11, n), rng.integers(0, 7, n)], 1)
    pd.DataFrame({"image_id": [f"Train_{i}" for i in range(n)], "grapheme_root": labels[:, 0],
                  "vowel_diacritic": labels[:, 1], "consonant_diacritic": labels[:, 2]}
                 ).to_csv(tmp_path / "train.csv", index=False)
    r = runner.invoke(app, ["split", str(tmp_path), "--folds", "4", "--group", "grapheme"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: no grapheme_root class has 4 images, so the 4 folds keep label triples whole without "
                     "stratifying by grapheme_root"]
    fold = pd.read_csv(tmp_path / "folds.csv")["fold"].to_numpy()
    assert sorted(set(fold)) == [0, 1, 2, 3]
    folds_of: dict[tuple, set] = {}
    for row, k in zip(map(tuple, labels), fold, strict=True):
        folds_of.setdefault(row, set()).add(int(k))
    assert all(len(ks) == 1 for ks in folds_of.values())
    assert np.bincount(fold).min() >= 60  # 300 images spread over 4 folds, not one fold of everything
