"""Non-square inputs (`data.image_size: [H, W]`, `okkhor prepare --size HxW`) through prepare, train, predict with
TTA, evaluate and export; the ONNX graph agrees with torch and with `okkhor predict`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import TINY_TRAIN, assert_one_line_error
from okkhor.cli import app
from okkhor.config import load_config
from okkhor.data.folds import read_folds
from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache, preprocess
from okkhor.inference.predict import TTA_VIEWS, ensemble_probs, load_members, tta_view
from okkhor.io.kaggle import ImageFiles, image_parquet_files
from okkhor.io.labels import load_targets
from okkhor.metrics import hierarchical_recall
from okkhor.models.model import load_for_inference
from okkhor.utils.sizes import hw, parse_size, size_text

runner = CliRunner()
H, W = 64, 112   # the shape the issue names (the 10th place trained at 128x224: the same aspect ratio)
SHAPE = f"{H}x{W}"


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def wide_run(tiny_kaggle_dir, tmp_path_factory):
    """A tiny data set prepared at HxW and a one-epoch run trained on it through the CLI's short flag."""
    tiny = tiny_kaggle_dir(copy=True, n_train=48, n_test=12)
    prep = cli("prepare", tiny.root, "--size", SHAPE)
    run = tmp_path_factory.mktemp("wide") / "run"
    sets = [s for s in TINY_TRAIN if not s.startswith("data.image_size=")]
    code, out = cli("train", "--data", tiny.root, "--out", run, "--image-size", SHAPE,
                    *[a for s in sets for a in ("--set", s)])
    assert code == 0, out
    return tiny, prep, run, out


def test_sizes_parse_every_form():
    assert parse_size("128x224") == (128, 224) == parse_size([128, 224]) == parse_size((128, 224))
    assert parse_size("64") == 64 == parse_size([64, 64]) == parse_size("64X64")
    assert hw(64) == (64, 64) and hw("32x56") == (32, 56)
    assert size_text((64, 112)) == "64x112" and size_text(128) == "128"
    for bad in ("64x", "x64", "64x112x3", "abc", 0, -3, [1, 2, 3], 1.5, True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_config_key_takes_a_list_or_hxw_and_a_square_stays_an_int():
    assert load_config(None, ["data.image_size=64x112"]).data.image_size == [64, 112]
    assert load_config(None, ["data.image_size=[64, 112]"]).data.image_size == [64, 112]
    assert load_config(None, ["data.image_size=[48, 48]"]).data.image_size == 48
    assert load_config(None, ["data.image_size=48"]).data.image_size == 48


@pytest.mark.parametrize("value, needle", [("8x64", "each side must be at least 16"),
                                           ("64x", "expected a side or [H, W]")])
def test_bad_sizes_are_one_line(tmp_path, value, needle):
    assert_one_line_error(*cli("train", "--data", tmp_path, "--out", tmp_path / "r", "--set",
                               f"data.image_size={value}"), "data.image_size", needle)


def test_prepare_bad_size_is_one_line(tiny_kaggle_dir):
    tiny = tiny_kaggle_dir()
    assert_one_line_error(*cli("prepare", tiny.root, "--size", "32by56"), "--size", "32by56")
    assert_one_line_error(*cli("prepare", tiny.root, "--size", "32x8"), "--size 32x8", "at least 16")


def test_prepare_writes_an_h_by_w_cache(wide_run):
    tiny, (code, out), _, _ = wide_run
    assert code == 0, out
    cache = default_cache_dir(tiny.root, PrepareOptions(SHAPE))
    assert cache.name == SHAPE and str(cache / "train.npy") in out
    images, ids = load_cache(cache, "train")
    assert images.shape == (len(tiny.train_ids), H, W) and ids == tiny.train_ids


def test_train_records_the_shape_and_trains_at_it(wide_run):
    _, _, run, out = wide_run
    assert f"at {SHAPE} px" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"] == [H, W]
    model, cfg, *_ = load_for_inference(run / "checkpoints" / "best.pt")
    assert cfg.data.image_size == [H, W]
    with torch.no_grad():
        outs = model(torch.rand(2, 1, H, W))
    assert [o.shape[1] for o in outs] == [4, 3, 2]


def test_tta_views_shift_each_axis_by_its_own_side():
    x = torch.zeros(1, 1, 20, 60)
    x[0, 0, 10, 30] = 1.0
    right = TTA_VIEWS.index((1, 0, 1.0))
    down = TTA_VIEWS.index((0, 1, 1.0))
    # steps: 3% of 60 = 2 pixels across, 3% of 20 = 1 pixel (the minimum) down
    assert torch.nonzero(tta_view(x, right)[0, 0] > 0.99).tolist() == [[10, 32]]
    assert torch.nonzero(tta_view(x, down)[0, 0] > 0.99).tolist() == [[11, 30]]


def test_predict_with_tta_and_evaluate(wide_run, tmp_path):
    tiny, _, run, _ = wide_run
    ckpt = run / "checkpoints" / "best.pt"
    code, out = cli("predict", ckpt, "--data", tiny.root, "--tta", 4, "--out", tmp_path / "sub.csv",
                    "--probs", tmp_path / "p.npz")
    assert code == 0, out
    probs = np.load(tmp_path / "p.npz")
    assert probs["grapheme_root"].shape == (len(tiny.test_ids), 4)
    np.testing.assert_allclose(probs["grapheme_root"].sum(axis=1), 1.0, atol=1e-5)
    code, out = cli("evaluate", ckpt, "--data", tiny.root, "--out", tmp_path / "ev")
    assert code == 0, out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    # independently: the checkpoint on the validation fold's rows of the HxW cache, scored by the metric
    images, ids = load_cache(default_cache_dir(tiny.root, PrepareOptions(SHAPE)), "train")
    folds = read_folds(tiny.root / "folds.csv", ids)
    rows = np.flatnonzero(folds == 0)
    members = load_members([ckpt])
    want = ensemble_probs(members, {members[0].preprocessing: images}, rows=rows)
    label_of = dict(zip(tiny.train_ids, tiny.train_labels.tolist(), strict=False))
    truth = np.array([label_of[ids[r]] for r in rows])
    pred = np.stack([want[name].argmax(1) for name in tiny.names], axis=1)
    assert metrics["images"] == len(rows)
    assert metrics["score"] == pytest.approx(hierarchical_recall(truth, pred, load_targets(tiny.root))[0], abs=1e-9)


def test_onnx_export_matches_torch_and_predict(wide_run, tmp_path):
    import onnxruntime as ort

    tiny, _, run, _ = wide_run
    ckpt = run / "checkpoints" / "best.pt"
    code, out = cli("export", ckpt, "--onnx", tmp_path / "m.onnx")
    assert code == 0, out
    assert f"input [batch, 1, {H}, {W}]" in out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["okkhor.image_size"] == SHAPE
    model, *_ = load_for_inference(ckpt)
    x = np.random.default_rng(1).random((5, 1, H, W), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for g, w in zip(session.run(list(tiny.names), {"image": x}), want, strict=False):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    # the raw test images through prepare's preprocessing and the graph give `okkhor predict`'s probabilities
    assert cli("predict", ckpt, "--data", tiny.root, "--out", tmp_path / "s.csv", "--probs", tmp_path / "p.npz")[0] == 0
    probs = np.load(tmp_path / "p.npz")
    ids, raw = zip(*ImageFiles(image_parquet_files(tiny.root, "test")).batches(1000), strict=False)
    images = preprocess(np.concatenate(raw), (H, W))[:, None].astype(np.float32) / 255.0
    assert list(probs["image_ids"]) == [i for part in ids for i in part]
    for name, logits in zip(tiny.names, session.run(list(tiny.names), {"image": images}), strict=False):
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(1).numpy(), probs[name], atol=1e-4, rtol=0)
