"""Top-N checkpoints, `okkhor average` (with batch-norm recomputation) and train.swa_epochs."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_TRAIN, assert_one_line_error, prepared_tiny
from okkhor.cli import app
from okkhor.config import load_config
from okkhor.io.checkpoint import load as load_checkpoint
from okkhor.models.model import load_for_inference
from okkhor.training.train import train

FAST = [*TINY_TRAIN, "train.epochs=3", "train.keep_top=2", "train.swa_epochs=2", "train.lr=3e-3",
        "train.schedule=constant"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_kaggle_dir, tmp_path_factory):
    tiny = prepared_tiny(tiny_kaggle_dir, n_train=48, n_test=8)
    out = tmp_path_factory.mktemp("avg") / "run"
    lines = []
    train(tiny.root, out, load_config(None, FAST), show_progress=False, log=lines.append)
    return tiny, out, lines


def _outputs(path, x):
    model = load_for_inference(path)[0]
    with torch.no_grad():
        return model(x)


def test_keep_top_keeps_the_two_best_epochs(run):
    _, out, _ = run
    valid = pd.read_csv(out / "metrics.csv").query("split == 'valid'")
    # on a tie ignite drops the earlier epoch: best score first, then the latest epoch
    best = valid.sort_values(["score", "epoch"], ascending=[False, False]).head(2)
    kept = sorted(p.name for p in (out / "checkpoints").glob("top-*.pt"))
    pairs = zip(best["epoch"], best["score"], strict=True)
    assert kept == sorted(f"top-epoch{int(e)}-score{s:.4f}.pt" for e, s in pairs)
    assert len(load_checkpoint(out / "checkpoints" / "last.pt")["top"]["saved"]) == 2


def test_swa_averages_the_last_epochs_into_swa_pt(run):
    tiny, out, lines = run
    swa = out / "checkpoints" / "swa.pt"
    assert any(line.startswith("train: SWA of epochs 2..3 (2 epochs)") for line in lines)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert int(last["swa"]["n_averaged"]) == 2
    key = "backbone.conv_stem.weight"
    # the mean of epochs 2 and 3 is not epoch 3's weights (lr 3e-3 moves them every step)
    assert not torch.allclose(load_checkpoint(swa)["model"][key], last["model"][key])
    res = runner.invoke(app, ["evaluate", str(swa), "--data", str(tiny.root), "--out", str(out / "ev-swa")])
    assert res.exit_code == 0, res.output


def test_averaging_two_identical_checkpoints_gives_the_same_outputs(run, tmp_path):
    tiny, out, _ = run
    best = out / "checkpoints" / "best.pt"
    avg = tmp_path / "avg.pt"
    res = runner.invoke(app, ["average", str(best), str(best), "--out", str(avg)])
    assert res.exit_code == 0, res.output
    x = torch.rand(4, 1, 32, 32)
    for a, b in zip(_outputs(best, x), _outputs(avg, x), strict=False):
        torch.testing.assert_close(a, b)
    sub = tmp_path / "sub.csv"
    res = runner.invoke(app, ["predict", str(avg), "--data", str(tiny.root), "--out", str(sub)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(avg), "--onnx", str(tmp_path / "avg.onnx")])
    assert res.exit_code == 0, res.output


def test_average_with_bn_data_recomputes_batch_norm(run, tmp_path):
    tiny, out, _ = run
    tops = sorted((out / "checkpoints").glob("top-*.pt"))
    plain, bn = tmp_path / "plain.pt", tmp_path / "bn.pt"
    assert runner.invoke(app, ["average", *map(str, tops), "--out", str(plain)]).exit_code == 0
    res = runner.invoke(app, ["average", *map(str, tops), "--out", str(bn), "--bn-data", str(tiny.root),
                              "--no-progress"])
    assert res.exit_code == 0 and "batch norm recomputed" in res.output, res.output
    a, b = load_checkpoint(plain)["model"], load_checkpoint(bn)["model"]
    means = [k for k in a if k.endswith("running_mean")]
    assert means and any(not torch.allclose(a[k], b[k]) for k in means)
    weights = [k for k in a if k.endswith(".weight")]
    assert all(torch.equal(a[k], b[k]) for k in weights)   # only the statistics change


def test_average_of_other_targets_is_one_error(run, tmp_path, tiny_kaggle_dir):
    _, out, _ = run
    best = out / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    other = tmp_path / "other.pt"
    ckpt["targets"] = {**ckpt["targets"], "names": ["a", "b", "c"]}
    torch.save(ckpt, other)
    res = runner.invoke(app, ["average", str(best), str(other), "--out", str(tmp_path / "x.pt")])
    assert_one_line_error(res.exit_code, res.output, str(other), "same model and targets")
