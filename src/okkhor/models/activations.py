"""Activation choice for any timm backbone: through `act_layer` where the model takes it, else by swapping modules."""
from __future__ import annotations

import copy
import re
from typing import Optional, Union

import timm
import timm.layers.activations as _timm_act
import timm.layers.activations_me as _timm_act_me
import timm.layers.squeeze_excite as _timm_se
import torch
import torch.nn as nn
from timm.layers import get_act_layer

from okkhor.models.timm_adapter import efficientnet_se_type
from okkhor.options import ACTIVATIONS

ActLike = Union[str, type, None]


def _existing(module, names: tuple[str, ...]) -> tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if isinstance(getattr(module, n, None), type))


# activation modules that may be replaced; gates (Sigmoid, HardSigmoid, Tanh) never are
SWAPPABLE_ACTS: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.PReLU,
    *_existing(_timm_act, ("Swish", "Mish", "HardSwish", "HardMish", "GELU", "GELUTanh", "QuickGELU", "PReLU")),
    *_existing(_timm_act_me, ("SwishMe", "MishMe", "HardSwishMe", "HardMishMe")),
)

# gates: counted by count_activations, never replaced
GATE_ACTS: tuple[type, ...] = (
    nn.Sigmoid, nn.Hardsigmoid, nn.Tanh,
    *_existing(_timm_act, ("Sigmoid", "HardSigmoid", "Tanh")), *_existing(_timm_act_me, ("HardSigmoidMe",)),
)

# squeeze-excitation blocks known by type; other classes count when their name says so (SEModule, SELayer,
# SEBlock, ...SqueezeExcite...; not networks or residual blocks that merely contain one, like SENet)
SE_TYPES: tuple[type, ...] = _existing(_timm_se, ("SEModule", "EffectiveSEModule", "SqueezeExcite", "SqueezeExciteCl"))
SE_TYPES += tuple(t for t in (efficientnet_se_type(),) if t is not None)
_SE_NAME = re.compile(r"^(Effective)?(SE|Se)(Module|Layer|Block)$|SqueezeExcit")


def is_se_block(module: nn.Module) -> bool:
    """True for squeeze-excitation modules (whose inner activation `act_in_se` governs)."""
    return isinstance(module, SE_TYPES) or bool(_SE_NAME.search(type(module).__name__))


def resolve_act_layer(act: ActLike) -> Optional[type]:
    """An activation class from a name (`relu`, `silu`/`swish`, `mish`, any timm name) or the class itself.

    `default` (or None) means: keep the model's own activation, and returns None.
    """
    if act is None or act == "default":
        return None
    if isinstance(act, type):
        if not issubclass(act, nn.Module):
            raise TypeError(f"act must be an nn.Module subclass or a name, got {act.__name__}")
        return act
    if not isinstance(act, str):
        raise TypeError(f"act must be a name or an nn.Module subclass, got {type(act).__name__}")
    try:
        layer = get_act_layer(act)
    except (KeyError, ValueError, AssertionError):
        layer = None
    if not isinstance(layer, type):
        raise ValueError(f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    return layer


def _new_act(act_layer: type, like: nn.Module) -> nn.Module:
    inplace = bool(getattr(like, "inplace", False))
    try:
        return act_layer(inplace=inplace)
    except TypeError:
        return act_layer()


def _se_prefixes(model: nn.Module) -> list[str]:
    return [name + "." for name, m in model.named_modules() if name and is_se_block(m)]


def _activation_slots(model: nn.Module):
    """Yield (parent, attribute, qualified name, module) for every swappable activation module."""
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, SWAPPABLE_ACTS):
                yield parent, attr, f"{parent_name}.{attr}" if parent_name else attr, child


def set_activation(model: nn.Module, act: ActLike, act_in_se: bool = True) -> int:
    """Replace every activation module of `model` by `act` (inside SE blocks only when `act_in_se`).

    Gates (sigmoids) are kept. Returns how many modules were replaced. Works on any model; activations called as
    functions inside `forward` (F.relu) cannot be reached this way.
    """
    act_layer = resolve_act_layer(act)
    if act_layer is None:
        return 0
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    se = _se_prefixes(model) if not act_in_se else []
    swaps = [(parent, attr, child) for parent, attr, name, child in _activation_slots(model)
             if type(child) is not act_layer and not any(name.startswith(p) for p in se)]
    for parent, attr, child in swaps:
        setattr(parent, attr, _new_act(act_layer, child))
    return len(swaps)


def _restore_se_activations(model: nn.Module, reference: nn.Module) -> int:
    """Put back, inside SE blocks, the activation types that the default-built `reference` has at the same places."""
    ref = dict(reference.named_modules())
    se = _se_prefixes(model)
    restored = 0
    for parent, attr, name, child in list(_activation_slots(model)):
        original = ref.get(name)
        if not any(name.startswith(p) for p in se) or original is None or type(original) is type(child):
            continue
        if any(True for _ in original.parameters()) or any(True for _ in original.buffers()):
            continue  # a learnt activation (PReLU) cannot be copied from a meta-device reference
        setattr(parent, attr, copy.deepcopy(original))
        restored += 1
    return restored


def count_activations(model: nn.Module) -> dict[str, int]:
    """How many modules of each activation/gate type the model holds, e.g. {'Mish': 49, 'Sigmoid': 16}."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, SWAPPABLE_ACTS + GATE_ACTS):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def create_backbone(name: str, act: ActLike = "default", pretrained: bool = False, in_chans: int = 1,
                    drop_path: float = 0.0, act_in_se: bool = True) -> nn.Module:
    """A timm model with its classifier removed (num_classes=0): forward gives pooled features.

    A non-default `act` goes to the constructor as `act_layer` when it accepts one; every activation module that
    is still of another type afterwards (or all of them, when the constructor takes no `act_layer`) is swapped.
    With `act_in_se=False`, squeeze-excitation blocks keep the activation the model has by default.
    How it went is recorded in `model.okkhor_act` (route, swapped, restored).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name, got {name!r}")
    act_layer = resolve_act_layer(act)
    kwargs = {"pretrained": pretrained, "in_chans": in_chans, "num_classes": 0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if act_layer is None:
        return timm.create_model(name, **kwargs)
    try:
        model = timm.create_model(name, act_layer=act_layer, **kwargs)
        via_act_layer = True
    except TypeError as exc:
        if "act_layer" not in str(exc):
            raise
        model = timm.create_model(name, **kwargs)
        via_act_layer = False
    restored = 0
    if via_act_layer and not act_in_se and _se_prefixes(model):
        try:  # the default-built model, only to read its SE activations: no memory, no weights
            with torch.device("meta"):
                reference = timm.create_model(name, **{**kwargs, "pretrained": False})
        except Exception:  # a model whose constructor computes with tensors cannot be built on "meta"
            reference = timm.create_model(name, **{**kwargs, "pretrained": False})
        restored = _restore_se_activations(model, reference)
    swapped = set_activation(model, act_layer, act_in_se=act_in_se)
    route = ("act_layer+swap" if swapped else "act_layer") if via_act_layer else "swap"
    model.okkhor_act = {"act": act_layer.__name__, "route": route, "swapped": swapped, "restored": restored}
    return model
