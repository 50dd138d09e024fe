"""The one place okkhor reaches into timm's private names; tests/test_structure.py fails when timm moves them."""
from __future__ import annotations

from typing import Optional


def activation_names() -> list[str]:
    """Every activation name timm's `get_act_layer` resolves (timm keeps the table private)."""
    from timm.layers.create_act import _ACT_LAYER_DEFAULT

    return sorted(_ACT_LAYER_DEFAULT)


def efficientnet_se_type() -> Optional[type]:
    """timm's EfficientNet squeeze-excitation block class, or None in a timm without it."""
    try:
        from timm.models._efficientnet_blocks import SqueezeExcite
    except ImportError:  # other timm layouts
        return None
    return SqueezeExcite
