"""`okkhor train --init CKPT`: the starting weights, heads re-initialised for new targets, size changes, errors."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_TRAIN, assert_one_line_error, prepared_tiny
from okkhor.cli import app
from okkhor.config import ModelConfig, load_config
from okkhor.errors import OkkhorError
from okkhor.io.checkpoint import load as load_checkpoint
from okkhor.io.labels import load_targets
from okkhor.models.model import build_model
from okkhor.targets import Targets
from okkhor.training.finetune import init_from
from okkhor.training.train import train

FAST = TINY_TRAIN
runner = CliRunner()


@pytest.fixture(scope="module")
def source(tiny_kaggle_dir, tmp_path_factory):
    """A tiny data set and a one-epoch run on it: (data, best.pt, its weights)."""
    tiny = prepared_tiny(tiny_kaggle_dir, n_train=48, n_test=0)
    out = tmp_path_factory.mktemp("src") / "run"
    train(tiny.root, out, load_config(None, FAST), show_progress=False, log=lambda m: None)
    best = out / "checkpoints" / "best.pt"
    return tiny, best, load_checkpoint(best)["model"]


def _fresh(targets: Targets, graphemes=None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="test_efficientnet", grapheme_head=graphemes is not None), targets,
                       graphemes)


def test_init_loads_every_weight_when_the_targets_match(source):
    tiny, best, weights = source
    targets = load_targets(tiny.root)
    net, lines = _fresh(targets), []
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert init_from(net, best, "test_efficientnet", targets, lines.append) == {"heads": True,
                                                                                "grapheme_head": False}
    after = net.state_dict()
    assert not torch.equal(before["backbone.conv_stem.weight"], weights["backbone.conv_stem.weight"])
    for key, value in weights.items():
        assert torch.equal(after[key], value), key
    assert not any("re-initialised" in line for line in lines)


def test_new_targets_reinitialise_the_heads_and_keep_the_backbone(source):
    tiny, best, weights = source
    other = Targets.make(["grapheme_root", "vowel_diacritic", "consonant_diacritic"], [5, 3, 2])
    graphemes = torch.tensor([[0, 0, 0], [1, 2, 1]])
    net, lines = _fresh(other, graphemes, seed=1), []
    fresh_heads = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("backbone.")}
    init_from(net, best, "test_efficientnet", other, lines.append)
    after = net.state_dict()
    for key, value in fresh_heads.items():   # heads and grapheme head: the fresh initialisation, not the ckpt's
        assert torch.equal(after[key], value), key
    backbone = [k for k in weights if k.startswith("backbone.")]
    assert backbone and all(torch.equal(after[k], weights[k]) for k in backbone)
    assert sum("targets differ" in line and "target heads are re-initialised" in line for line in lines) == 1
    assert sum("grapheme head is re-initialised" in line for line in lines) == 1


def test_another_backbone_is_one_error(source):
    tiny, best, _ = source
    net = build_model(ModelConfig(name="test_resnet"), load_targets(tiny.root))
    with pytest.raises(OkkhorError, match="model.name test_efficientnet, but this run trains test_resnet"):
        init_from(net, best, "test_resnet", load_targets(tiny.root))


def test_cli_init_at_another_size_trains_and_records_it(source, tmp_path):
    tiny, best, _ = source
    # --set wins over the short flags: leave the model and the size to them
    sets = [a for kv in FAST if not kv.startswith(("model.name", "data.image_size")) for a in ("--set", kv)]
    out = tmp_path / "ft"
    res = runner.invoke(app, ["train", "--data", str(tiny.root), "--out", str(out), *sets, "--image-size", "40",
                              "--model", "test_efficientnet", "--init", str(best), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "--init" in res.output and "new optimizer and schedule" in res.output
    assert "test_efficientnet at 40 px" in res.output
    assert json.loads((out / "run.json").read_text())["init"] == str(best.resolve())
    res = runner.invoke(app, ["train", "--data", str(tiny.root), "--out", str(tmp_path / "bad"), *sets,
                              "--model", "test_resnet", "--init", str(best), "--no-progress"])
    assert_one_line_error(res.exit_code, res.output, "--init", "test_resnet")
