"""okkhor predict: submission rows and order, determinism, ensembling, TTA, prior correction, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import assert_one_line_error, cli, make_checkpoint
from okkhor.data.dataset import to_tensor
from okkhor.data.prepare import preprocess
from okkhor.inference.predict import MAX_TTA, check_tta, class_priors, decide, load_members, tta_view
from okkhor.io.kaggle import iter_image_parquet


@pytest.fixture(scope="module")
def setup(tiny_kaggle_dir, tmp_path_factory):
    data = tiny_kaggle_dir()
    tmp = tmp_path_factory.mktemp("predict")
    a = make_checkpoint(tmp / "a.pt", data.root, seed=0)
    b = make_checkpoint(tmp / "b.pt", data.root, seed=1, image_size=40, crop=False)
    return data, a, b, tmp


def test_submission_rows_probs_and_determinism(setup):
    data, a, _, tmp = setup
    code, out = cli("predict", a, "--data", data.root, "--out", tmp / "s1.csv", "--probs", tmp / "p1.npz",
                    "--batch-size", 5, "--tta", 1)
    assert code == 0, out
    test = pd.read_csv(data.root / "test.csv")
    sub = pd.read_csv(tmp / "s1.csv")
    assert list(sub.columns) == ["row_id", "target"]
    assert sub["row_id"].tolist() == test["row_id"].tolist()
    assert sub["target"].dtype.kind == "i"
    limits = dict(zip(data.names, data.num_classes, strict=False))
    assert all(0 <= t < limits[c] for t, c in zip(sub["target"], test["component"], strict=False))

    # --tta 1 is plain inference: the model's softmax on the prepare preprocessing, nothing else
    probs = np.load(tmp / "p1.npz")
    assert probs["image_ids"].tolist() == data.test_ids
    (member,) = load_members([a], "cpu")
    (_, raw), = list(iter_image_parquet(data.root / "test_image_data_0.parquet", batch_rows=1000))
    with torch.no_grad():
        want = member.model(to_tensor(preprocess(raw, 32, True)))
    for name, logits in zip(data.names, want, strict=False):
        np.testing.assert_allclose(probs[name], logits.softmax(1).numpy(), atol=1e-6)
        np.testing.assert_allclose(probs[name].sum(axis=1), 1.0, atol=1e-5)
    by_row = dict(zip(sub["row_id"], sub["target"], strict=False))
    for i, image_id in enumerate(data.test_ids):
        for name in data.names:
            assert by_row[f"{image_id}_{name}"] == probs[name][i].argmax()

    code, out = cli("predict", a, "--data", data.root, "--out", tmp / "s2.csv", "--probs", tmp / "p2.npz")
    assert code == 0, out
    assert (tmp / "s1.csv").read_bytes() == (tmp / "s2.csv").read_bytes()


def test_ensemble_averages_checkpoints_and_prior_correction(setup):
    data, a, b, tmp = setup
    runs = {"a": [a], "b": [b], "ab": [a, b]}
    for key, ckpts in runs.items():
        extra = ["--prior-correction"] if key == "ab" else []
        code, out = cli("predict", *ckpts, "--data", data.root, "--out", tmp / f"{key}.csv", "--probs",
                        tmp / f"{key}.npz", "--tta", 3, *extra)
        assert code == 0, out
    pa, pb, pab = (np.load(tmp / f"{k}.npz") for k in runs)
    for name in data.names:
        np.testing.assert_allclose(pab[name], (pa[name] + pb[name]) / 2, atol=1e-6)
    # the submission of the corrected run is argmax(p / prior) of the averaged probabilities
    priors = class_priors(load_members([a, b], "cpu"))
    chosen = decide({n: pab[n] for n in data.names}, priors)
    sub = pd.read_csv(tmp / "ab.csv")
    expected = [chosen[name][i] for i in range(len(data.test_ids)) for name in data.names]
    assert sub["target"].tolist() == expected


def test_tta_views_are_deterministic_shifts_and_zooms():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 10, 12] = 1.0
    assert tta_view(x, 0) is x
    right = tta_view(x, 1)
    assert right[0, 0, 10, 13] == pytest.approx(1.0, abs=1e-5) and right.sum() == pytest.approx(1.0, abs=1e-5)
    down = tta_view(x, 3)
    assert down[0, 0, 11, 12] == pytest.approx(1.0, abs=1e-5)
    views = [tta_view(x, v) for v in range(MAX_TTA)]
    assert all(v.shape == x.shape for v in views)
    assert len({tuple(v.flatten().tolist()) for v in views}) == MAX_TTA
    assert torch.equal(tta_view(x, 5), tta_view(x, 5))


def test_prior_correction_favours_rare_classes(setup):
    data, a, _, tmp = setup
    probs = {"t": np.array([[0.55, 0.45], [0.9, 0.1]], dtype=np.float32)}
    priors = {"t": np.array([0.8, 0.2])}
    assert decide(probs)["t"].tolist() == [0, 0]
    assert decide(probs, priors)["t"].tolist() == [1, 0]
    # counts from the checkpoint and from DATA_DIR/train.csv agree (add-one smoothing, normalised)
    no_counts = make_checkpoint(tmp / "no_counts.pt", data.root, counts=False)
    from_ckpt = class_priors(load_members([a], "cpu"))
    from_csv = class_priors(load_members([no_counts], "cpu"), data.root)
    for name, n in zip(data.names, data.num_classes, strict=False):
        np.testing.assert_allclose(from_ckpt[name], from_csv[name])
        assert from_ckpt[name].shape == (n,) and from_ckpt[name].sum() == pytest.approx(1.0)


def test_errors_are_one_line(setup, tmp_path):
    data, a, _, _ = setup
    assert_one_line_error(*cli("predict", tmp_path / "nope.pt", "--data", data.root, "--out", tmp_path / "s.csv"),
                          "nope.pt", "checkpoint not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(*cli("predict", a, "--data", empty, "--out", tmp_path / "s.csv"),
                          "no test_image_data_")
    assert_one_line_error(*cli("predict", a, "--data", tmp_path / "missing", "--out", tmp_path / "s.csv"),
                          "data directory not found")
    assert_one_line_error(*cli("predict", a, "--data", data.root, "--tta", 9), "--tta 9")
    assert_one_line_error(*cli("predict", a, "--data", data.root, "--probs", tmp_path / "p.txt"), ".npz")
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(Exception, match="--tta 0"):
        check_tta(0)
