"""Activation choice for any timm backbone: through `act_layer` where the model takes it, else by swapping modules."""
from __future__ import annotations

import timm
import torch.nn as nn

ACT_NAMES = ("default", "relu", "silu", "mish")


def create_backbone(name: str, act: str = "default", pretrained: bool = False, in_chans: int = 1,
                    drop_path: float = 0.0, act_in_se: bool = True) -> nn.Module:
    """A timm model with its classifier removed (num_classes=0): forward gives pooled features."""
    kwargs = {"pretrained": pretrained, "in_chans": in_chans, "num_classes": 0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if act != "default":
        kwargs["act_layer"] = act
    return timm.create_model(name, **kwargs)
