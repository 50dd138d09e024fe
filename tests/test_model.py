"""The model: one head per target on any timm backbone, activation choice, clear errors for names and weights."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from okkhor.config import ModelConfig
from okkhor.errors import OkkhorError
from okkhor.models.model import GraphemeModel, build_model
from okkhor.targets import Targets

BENGALI = Targets.make(("grapheme_root", "vowel_diacritic", "consonant_diacritic"), (168, 11, 7))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "seresnext26d_32x4d"])
def test_forward_gives_one_logit_tensor_per_target(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), BENGALI).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert isinstance(model, GraphemeModel)
    assert [tuple(o.shape) for o in out] == [(2, 168), (2, 11), (2, 7)]
    assert all(torch.isfinite(o).all() for o in out)


def test_heads_follow_the_targets_not_a_fixed_three():
    targets = Targets.make(("a", "b", "c", "d", "e"), (2, 3, 4, 5, 6))
    model = build_model(ModelConfig(name="test_efficientnet", dropout=0.1), targets).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 32, 32))
    assert [o.shape[1] for o in out] == [2, 3, 4, 5, 6]
    assert model.target_names == ("a", "b", "c", "d", "e")


def test_activation_choice_reaches_the_backbone():
    model = build_model(ModelConfig(name="resnet18", act="mish"), BENGALI)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Mish" in kinds and "ReLU" not in kinds


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(OkkhorError, match="unknown timm model 'resnet_nope'"):
        build_model(ModelConfig(name="resnet_nope"), BENGALI)


def test_pretrained_weights_offline_fail_with_one_line(tmp_path):
    """resnet18 has pretrained weights on the hub; offline (HF_HUB_OFFLINE=1, empty caches) that is one error line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th"),
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "okkhor", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
           "--set", "model.name=resnet18", "--set", "model.pretrained=true"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    assert output.splitlines() == [output]
    assert output.startswith("okkhor: error: model.pretrained=true:") and "resnet18" in output
    assert not (tmp_path / "run").exists()
