"""Augmentation presets on albumentations, chosen by `aug.preset`, or a user's serialised pipeline (`aug.file`)."""
from __future__ import annotations

from typing import Optional

from okkhor.config import AugConfig
from okkhor.data.dataset import Augment


def build_augment(cfg: AugConfig, image_size: int) -> Optional[Augment]:
    """The augmentation for training (None for preset `none` without a file)."""
    if cfg.preset == "none" and not cfg.file:
        return None
    raise NotImplementedError("augmentation presets land with the recipe issue")
