"""model.act on timm models: through act_layer where the constructor takes it, by swapping modules elsewhere."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from okkhor.config import ModelConfig
from okkhor.errors import OkkhorError
from okkhor.models.activations import count_activations, create_backbone, is_se_block, resolve_act_layer, set_activation
from okkhor.models.model import build_model
from okkhor.targets import Targets

ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish}
GATES = {"Sigmoid", "Hardsigmoid", "Tanh"}


def only(model: nn.Module, act: str) -> bool:
    """The model's activations (gates aside) are all of the chosen type."""
    return set(count_activations(model)) - GATES == {ACTS[act].__name__}


def runs(model: nn.Module, size: int = 32) -> torch.Size:
    model.eval()
    with torch.no_grad():
        return model(torch.rand(2, 1, size, size)).shape


def test_resolve_act_layer():
    assert resolve_act_layer("mish") is nn.Mish
    assert resolve_act_layer("swish") is nn.SiLU and resolve_act_layer("silu") is nn.SiLU
    assert resolve_act_layer("relu") is nn.ReLU
    assert resolve_act_layer(nn.GELU) is nn.GELU
    assert resolve_act_layer("default") is None and resolve_act_layer(None) is None
    with pytest.raises(ValueError, match="unknown activation"):
        resolve_act_layer("sparkle")
    with pytest.raises(TypeError):
        resolve_act_layer(3)
    with pytest.raises(TypeError):
        resolve_act_layer(int)


def test_resnet18_mish_goes_through_act_layer():
    model = create_backbone("resnet18", "mish")
    assert model.okkhor_act["route"] == "act_layer" and model.okkhor_act["swapped"] == 0
    assert only(model, "mish") and count_activations(model)["Mish"] == 17
    assert runs(model) == (2, 512)


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_efficientnet_b0_act_layer_reaches_every_block(act):
    model = create_backbone("efficientnet_b0", act)
    assert model.okkhor_act["route"] == "act_layer"
    assert only(model, act) and count_activations(model)["Sigmoid"] == 16    # the SE gates stay
    assert runs(model) == (2, 1280)


def test_seresnext26d_mish_swaps_the_se_blocks():
    model = create_backbone("seresnext26d_32x4d", "mish", act_in_se=True)
    assert model.okkhor_act == {"act": "Mish", "route": "act_layer+swap", "swapped": 8, "restored": 0}
    assert only(model, "mish") and "ReLU" not in count_activations(model)
    assert count_activations(model)["Sigmoid"] == 8
    assert runs(model) == (2, 2048)


def test_act_in_se_false_keeps_the_default_se_activation():
    resnext = create_backbone("seresnext26d_32x4d", "mish", act_in_se=False)
    assert count_activations(resnext)["ReLU"] == 8 and count_activations(resnext)["Mish"] == 27
    assert all(isinstance(m.fc1, nn.Conv2d) and isinstance(m.act, nn.ReLU) for m in resnext.modules()
               if type(m).__name__ == "SEModule")
    effnet = create_backbone("efficientnet_b0", "mish", act_in_se=False)
    assert effnet.okkhor_act["restored"] == 16
    assert count_activations(effnet)["SiLU"] == 16 and count_activations(effnet)["Mish"] == 33
    assert all(isinstance(m.act1, nn.SiLU) for m in effnet.modules() if type(m).__name__ == "SqueezeExcite")
    assert runs(effnet) == (2, 1280)


def test_model_without_act_layer_is_swapped():
    plain = timm.create_model("legacy_seresnet18", num_classes=0, in_chans=1)
    with pytest.raises(TypeError, match="act_layer"):
        timm.create_model("legacy_seresnet18", num_classes=0, in_chans=1, act_layer=nn.Mish)
    model = create_backbone("legacy_seresnet18", "mish")
    assert model.okkhor_act["route"] == "swap"
    assert model.okkhor_act["swapped"] == count_activations(plain)["ReLU"]
    assert only(model, "mish")
    assert runs(model) == runs(plain)
    kept = create_backbone("legacy_seresnet18", "mish", act_in_se=False)
    n_se = sum(1 for m in kept.modules() if is_se_block(m))
    assert n_se > 0 and count_activations(kept)["ReLU"] == n_se


def test_default_leaves_the_model_alone():
    model = create_backbone("resnet18", "default")
    assert not hasattr(model, "okkhor_act")
    assert count_activations(model) == {"ReLU": 17}


def test_set_activation_keeps_inplace_and_gates():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.GELU(), nn.Sigmoid())
    assert set_activation(model, "silu") == 2
    assert isinstance(model[1], nn.SiLU) and model[1].inplace
    assert isinstance(model[2], nn.SiLU) and not model[2].inplace
    assert isinstance(model[3], nn.Sigmoid)
    assert set_activation(model, "silu") == 0
    assert set_activation(model, "default") == 0
    with pytest.raises(TypeError):
        set_activation("model", "mish")


def test_build_model_with_mish():
    targets = Targets.make(["grapheme_root", "vowel_diacritic", "consonant_diacritic"], [168, 11, 7])
    model = build_model(ModelConfig(name="resnet18", act="mish"), targets)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 32))
    assert [o.shape for o in out] == [(2, 168), (2, 11), (2, 7)]


def test_model_act_takes_any_timm_activation_name():
    """model.act=hard_swish (not one of the four names the config once allowed) reaches every block."""
    from okkhor.config import load_config

    cfg = load_config(None, ["model.name=test_efficientnet", "model.act=hard_swish"])
    model = build_model(cfg.model, Targets.make(["a", "b"], [3, 2]))
    kinds = set(count_activations(model)) - GATES
    assert kinds and all("HardSwish" in k or k == "Hardswish" for k in kinds), kinds
    with torch.no_grad():
        assert [o.shape for o in model.eval()(torch.rand(2, 1, 32, 32))] == [(2, 3), (2, 2)]
    with pytest.raises(OkkhorError) as e:
        load_config(None, ["model.act=hard_swishh"])
    assert "model.act" in str(e.value) and "hard_swish" in str(e.value) and "\n" not in str(e.value)
