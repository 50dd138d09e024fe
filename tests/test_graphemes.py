"""The auxiliary grapheme head: classes and labels, model shapes, the loss, the seen score and --route."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_one_line_error, cli, make_checkpoint
from okkhor.config import Config
from okkhor.io.labels import load_targets
from okkhor.metrics import HierarchicalRecall
from okkhor.models.graphemes import (
    ABSENT,
    grapheme_classes,
    grapheme_index,
    route,
    seen_auroc,
    seen_score,
    with_grapheme_column,
)
from okkhor.models.model import build_model, load_for_inference
from okkhor.targets import Targets
from okkhor.training.mixing import MixedTargets, multihead_loss

TOY = Targets.make(["a", "b"], [4, 3])


def test_classes_and_labels():
    labels = np.array([[1, 2], [0, 1], [1, 2], [3, 0]])
    classes = grapheme_classes(labels)
    assert classes.tolist() == [[0, 1], [1, 2], [3, 0]]
    assert grapheme_index(np.array([[1, 2], [3, 0], [2, 2]]), classes).tolist() == [1, 2, ABSENT]
    assert with_grapheme_column(labels, classes).tolist() == [[1, 2, 1], [0, 1, 0], [1, 2, 1], [3, 0, 2]]


def test_model_shapes_and_inference_round_trip(tmp_path):
    cfg = Config()
    cfg.model.name, cfg.model.grapheme_head = "test_resnet", True
    classes = np.array([[0, 0], [1, 2], [3, 1]])
    model = build_model(cfg.model, TOY, classes).eval()
    outs = model(torch.rand(5, 1, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(5, 4), (5, 3), (5, 3)]
    assert model.grapheme_classes.tolist() == classes.tolist()
    with pytest.raises(ValueError, match="training graphemes"):
        build_model(cfg.model, TOY)
    cfg.model.grapheme_head = False
    assert len(build_model(cfg.model, TOY, classes)(torch.rand(2, 1, 32, 32))) == 2  # the flag decides
    cfg.model.grapheme_head = True
    path = tmp_path / "c.pt"
    torch.save({"config": cfg.to_dict(), "targets": TOY.to_dict(), "model": model.state_dict(), "ema": None}, path)
    again, *_ = load_for_inference(path)
    x = torch.rand(3, 1, 32, 32)
    for a, b in zip(model(x), again(x), strict=False):
        assert torch.equal(a, b)


def test_loss_counts_the_head_with_its_weight_and_skips_unknown_triples():
    torch.manual_seed(0)
    logits = (torch.randn(6, 4), torch.randn(6, 3), torch.randn(6, 3))
    y = torch.tensor([[0, 0, 0], [1, 2, 1], [3, 1, 2], [3, 1, 2], [2, 2, ABSENT], [0, 0, 0]])
    loss = multihead_loss(logits, MixedTargets.unmixed(y), [2.0, 1.0, 0.5])
    known = y[:, 2] != ABSENT
    head = F.cross_entropy(logits[2][known], y[known, 2], reduction="sum") / 6
    expected = (2 * F.cross_entropy(logits[0], y[:, 0]) + F.cross_entropy(logits[1], y[:, 1]) + 0.5 * head)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_metric_reads_only_the_component_heads():
    y = torch.tensor([[0, 1, 0], [1, 0, 1]])
    logits = (torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]]), torch.tensor([[0, 5.0, 0], [5.0, 0, 0]]),
              torch.tensor([[0, 5.0, 0], [5.0, 0, 0]]))  # the head is wrong on both: it must not count
    metric = HierarchicalRecall(TOY)
    metric.reset()
    metric.update((logits, y))
    assert metric.compute()["score"] == 1.0


def test_route_picks_the_sure_head_and_keeps_the_components_elsewhere():
    classes = np.array([[1, 1], [2, 0], [3, 2]])
    chosen = {"a": np.array([0, 0, 0]), "b": np.array([2, 2, 2])}
    head = np.array([[0.9, 0.05, 0.05],   # sure of [1, 1]: routed
                     [0.4, 0.35, 0.25],   # unsure: the components' [0, 2]
                     [0.1, 0.1, 0.8]])    # sure of [3, 2]
    labels, sure = route(chosen, head, classes, ["a", "b"], threshold=0.6)
    assert sure.tolist() == [True, False, True]
    assert labels["a"].tolist() == [1, 0, 3] and labels["b"].tolist() == [1, 2, 2]
    assert seen_score(head).tolist() == pytest.approx([0.9, 0.4, 0.8])
    assert seen_auroc(np.array([True, False, True]), seen_score(head)) == 1.0
    assert seen_auroc(np.array([True, True, True]), seen_score(head)) is None


def head_checkpoint(path, data_dir, triple, logit):
    """A checkpoint whose grapheme head says `triple` for every image with softmax margin set by `logit`."""
    targets = load_targets(data_dir)
    labels = pd.read_csv(data_dir / "train.csv")[list(targets.names)].to_numpy()
    classes = np.unique(np.vstack([labels, [triple]]), axis=0)
    cfg = Config()
    cfg.data.image_size, cfg.model.name, cfg.model.grapheme_head = 32, "test_resnet", True
    torch.manual_seed(0)
    model = build_model(cfg.model, targets, classes)
    with torch.no_grad():
        model.grapheme_head.weight.zero_()
        model.grapheme_head.bias.zero_()
        model.grapheme_head.bias[classes.tolist().index(list(triple))] = logit
    torch.save({"config": cfg.to_dict(), "targets": targets.to_dict(), "model": model.state_dict(), "ema": None},
               path)
    return path


def test_predict_route_through_the_cli(tiny_kaggle_dir, tmp_path):
    data = tiny_kaggle_dir()
    triple = [c - 1 for c in data.num_classes]  # the last class of every target
    sure = head_checkpoint(tmp_path / "sure.pt", data.root, triple, logit=6.0)
    code, out = cli("predict", sure, "--data", data.root, "--out", tmp_path / "r.csv", "--route")
    assert code == 0, out
    n = len(data.test_ids)
    assert f"{n} routed to the grapheme head" in out
    sub = pd.read_csv(tmp_path / "r.csv")
    for name, value in zip(data.names, triple, strict=False):
        assert (sub.loc[sub["row_id"].str.endswith("_" + name), "target"] == value).all()
    # a head that is not sure enough routes nothing: the submission is the component heads' own
    code, out = cli("predict", sure, "--data", data.root, "--out", tmp_path / "r2.csv", "--route",
                    "--route-threshold", "0.999")
    assert code == 0 and "0 routed" in out
    cli("predict", sure, "--data", data.root, "--out", tmp_path / "plain.csv")
    assert pd.read_csv(tmp_path / "r2.csv").equals(pd.read_csv(tmp_path / "plain.csv"))
    # evaluate reports the head's figures and routes the same way
    labels = pd.read_csv(data.root / "test_labels.csv")
    labels["seen"] = np.arange(len(labels)) % 2 == 0
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code, out = cli("evaluate", sure, "--data", data.root, "--labels", tmp_path / "labels.csv", "--route",
                    "--out", tmp_path / "ev")
    assert code == 0, out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["routed"] == n and metrics["grapheme_head"]["classes"] >= 1
    assert "seen AUROC" in out
    plain = make_checkpoint(tmp_path / "plain.pt", data.root)
    assert_one_line_error(*cli("predict", plain, "--data", data.root, "--out", tmp_path / "x.csv", "--route"),
                          "no grapheme head")


def test_export_names_the_grapheme_output(tiny_kaggle_dir, tmp_path):
    import onnx

    data = tiny_kaggle_dir()
    ckpt = head_checkpoint(tmp_path / "h.pt", data.root, [0] * len(data.names), logit=3.0)
    code, out = cli("export", ckpt, "--onnx", tmp_path / "m.onnx")
    assert code == 0, out  # the export's own check compares every output, the head's included, with torch
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.name for o in graph.graph.output] == [*data.names, "grapheme"]
    meta = {p.key: p.value for p in graph.metadata_props}
    model, *_ = load_for_inference(ckpt)
    assert json.loads(meta["okkhor.grapheme_classes"]) == model.grapheme_classes.tolist()


def test_training_with_the_grapheme_head(tiny_kaggle_dir, tmp_path):
    """A tiny run: the head's classes are the training fold's triples, its loss falls, and evaluate reports it."""
    from okkhor.config import load_config
    from okkhor.data.folds import read_folds
    from okkhor.training.train import train

    data = tiny_kaggle_dir(copy=True, n_train=64, n_test=16)
    cfg = load_config(None, ["data.image_size=32", "model.name=test_resnet", "train.epochs=3", "train.batch_size=16",
                             "data.workers=0", "data.folds=4", "eval.train_clean_size=32", "train.lr=3e-3",
                             "model.grapheme_head=true", "train.grapheme_loss_weight=1.0"])
    run = tmp_path / "run"
    train(data.root, run, cfg, show_progress=False, log=lambda message: None)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    labels = pd.read_csv(data.root / "train.csv")
    folds = read_folds(data.root / "folds.csv", labels["image_id"].astype(str).tolist())
    train_triples = np.unique(labels.loc[folds != 0, list(data.names)].to_numpy(), axis=0)
    assert ckpt["model"]["grapheme_classes"].tolist() == train_triples.tolist()
    assert ckpt["model"]["grapheme_head.weight"].shape[0] == len(train_triples)
    metrics = pd.read_csv(run / "metrics.csv")
    train_loss = metrics.loc[metrics["split"] == "train", "loss"].to_numpy()
    assert train_loss[-1] < train_loss[0]
    code, out = cli("evaluate", run / "checkpoints" / "last.pt", "--data", data.root, "--labels",
                    data.root / "test_labels.csv", "--out", tmp_path / "ev")
    assert code == 0, out
    head = json.loads((tmp_path / "ev" / "metrics.json").read_text())["grapheme_head"]
    assert head["classes"] == len(train_triples)
