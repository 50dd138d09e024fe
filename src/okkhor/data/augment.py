"""Augmentation presets on albumentations, chosen by `aug.preset`, or a user's serialised pipeline (`aug.file`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from okkhor.config import AugConfig
from okkhor.data.dataset import Augment
from okkhor.errors import OkkhorError
from okkhor.options import AUG_PRESETS
from okkhor.utils.sizes import hw

# the cache holds bright ink on black: everything moved in from outside the image is background (0).
# The cache is cropped to the ink with a small margin, so scales stay near 1 and shifts small: strokes pushed
# off the edge could take a diacritic (and so the label) with them.
_BLACK = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}

Transform = Union[A.BasicTransform, A.BaseCompose]


class StrokeWidth(A.ImageOnlyTransform):
    """Thicken (dilate) or thin (erode) bright strokes on a dark background with an elliptical kernel.

    Args:
        kernel_range: smallest and largest kernel side in pixels (1 leaves the image as it is).
        dilate_prob: chance of thickening; otherwise the strokes are thinned.
        p: chance of applying the transform.
    """

    class InitSchema(BaseTransformInitSchema):
        kernel_range: tuple[int, int]
        dilate_prob: float = Field(ge=0, le=1)

    def __init__(self, kernel_range: tuple[int, int] = (2, 3), dilate_prob: float = 0.5, p: float = 0.5):
        super().__init__(p=p)
        lo, hi = (int(v) for v in kernel_range)
        if not 1 <= lo <= hi:
            raise ValueError(f"kernel_range must be (lo, hi) with 1 <= lo <= hi, got {kernel_range}")
        self.kernel_range = (lo, hi)
        self.dilate_prob = float(dilate_prob)

    def get_params(self) -> dict[str, Any]:
        kernel = self.py_random.randint(*self.kernel_range)
        return {"kernel": kernel, "dilate": self.py_random.random() < self.dilate_prob}

    def apply(self, img: np.ndarray, kernel: int = 1, dilate: bool = True, **params: Any) -> np.ndarray:
        if kernel <= 1:
            return img
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
        out = cv2.dilate(img, element) if dilate else cv2.erode(img, element)
        return out.reshape(img.shape)


def _light(size: int) -> list[Transform]:
    return [A.Affine(scale=(0.9, 1.05), translate_percent=(-0.04, 0.04), rotate=(-8, 8), shear=(-6, 6), p=0.8,
                     **_BLACK)]


def _medium(size: int) -> list[Transform]:
    return [
        A.Affine(scale=(0.85, 1.08), translate_percent=(-0.06, 0.06), rotate=(-12, 12), shear=(-10, 10), p=0.9,
                 **_BLACK),
        A.OneOf([A.GridDistortion(num_steps=5, distort_limit=0.25, **_BLACK),
                 A.ElasticTransform(alpha=size * 0.6, sigma=size * 0.08, **_BLACK)], p=0.5),
        StrokeWidth(kernel_range=(2, max(2, round(size / 40))), p=0.4),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.08, 0.2), hole_width_range=(0.08, 0.2), fill=0,
                        p=0.4),
    ]


def _heavy(size: int) -> list[Transform]:
    return [
        A.Affine(scale=(0.8, 1.1), translate_percent=(-0.08, 0.08), rotate=(-15, 15), shear=(-15, 15), p=1.0, **_BLACK),
        A.OneOf([A.GridDistortion(num_steps=5, distort_limit=0.35, **_BLACK),
                 A.ElasticTransform(alpha=size * 0.9, sigma=size * 0.08, **_BLACK)], p=0.7),
        StrokeWidth(kernel_range=(2, max(3, round(size / 32))), p=0.5),
        A.OneOf([A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.1, 0.25),
                                 hole_width_range=(0.1, 0.25), fill=0),
                 A.GridDropout(ratio=0.4, unit_size_range=(max(2, size // 6), max(3, size // 3)), random_offset=True,
                               fill=0)], p=0.6),
    ]


# aug.preset (okkhor.options.AUG_PRESETS) -> builder of its transforms for a given image side
PRESET_BUILDERS = {"none": lambda size: [], "light": _light, "medium": _medium, "heavy": _heavy}
assert set(PRESET_BUILDERS) == set(AUG_PRESETS), "okkhor.options.AUG_PRESETS and the builders disagree"


def preset_pipeline(name: str, image_size: int) -> A.Compose:
    """The albumentations pipeline of a preset, e.g. to save with `A.save` and edit into an `aug.file`."""
    if name not in AUG_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUG_PRESETS)}")
    return A.Compose(PRESET_BUILDERS[name](image_size))


def _nodes(transform: Transform) -> list[Transform]:
    """The transform and everything nested in it, depth first."""
    out = [transform]
    for child in getattr(transform, "transforms", []) if isinstance(transform, A.BaseCompose) else []:
        out.extend(_nodes(child))
    return out


class AlbumentationsAugment:
    """An `Augment` over an albumentations pipeline whose result depends only on (image, seed).

    Each nested transform gets its own seed derived from (seed, its position), so transforms neither share
    random streams (albumentations' own `set_random_seed` gives all of them the same one) nor depend on earlier
    calls. Picklable, so DataLoader worker processes get their own copy; one call at a time per object (a call
    reseeds the pipeline it holds, so threads must not share one).
    """

    def __init__(self, pipeline: Transform, source: str = "augmentation"):
        if not isinstance(pipeline, (A.BasicTransform, A.BaseCompose)):
            raise TypeError(f"pipeline must be an albumentations transform, got {type(pipeline).__name__}")
        self.pipeline = pipeline if isinstance(pipeline, A.BaseCompose) else A.Compose([pipeline])
        self.source = source
        self._nodes = _nodes(self.pipeline)

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        seeds = np.random.SeedSequence(int(seed) & 0xFFFFFFFFFFFFFFFF).generate_state(len(self._nodes))
        for node, s in zip(self._nodes, seeds, strict=False):   # parents first: their propagation is then overridden
            node.set_random_seed(int(s))
        out = self.pipeline(image=image)["image"]
        if out.ndim == 3 and out.shape[-1] == 1 and image.ndim == 2:
            out = out[..., 0]
        if out.shape != image.shape or out.dtype != np.uint8:
            raise ValueError(f"{self.source}: the pipeline turned a {image.dtype} {list(image.shape)} image into "
                             f"{out.dtype} {list(out.shape)}; it must keep the size and uint8")
        return out

    def __repr__(self) -> str:
        return f"AlbumentationsAugment({self.source})"


def load_pipeline(path: Union[str, os.PathLike]) -> Transform:
    """Read a pipeline saved with `A.save` (YAML, or JSON by the `.json` suffix); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise OkkhorError(f"{path}: augmentation file not found")
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        pipeline = A.load(str(path), data_format=fmt)
    except Exception as exc:  # json/yaml parse errors, unknown transform names, bad arguments
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise OkkhorError(f"{path}: not an albumentations pipeline saved with A.save ({detail})") from None
    if not isinstance(pipeline, (A.BasicTransform, A.BaseCompose)):
        raise OkkhorError(f"{path}: not an albumentations pipeline saved with A.save")
    return pipeline


def build_augment(cfg: Union[AugConfig, str, Transform], image_size: Any) -> Optional[Augment]:
    """The augmentation for training (None for preset `none` without a file).

    `cfg` is an AugConfig (its `file` overrides its `preset`), a preset name, or an albumentations transform.
    `image_size` is a side or (H, W); a preset's size-dependent strengths follow the shorter side.
    """
    if isinstance(image_size, (bool, float)) or not isinstance(image_size, (int, list, tuple)):
        raise TypeError(f"image_size must be an int or (H, W), got {type(image_size).__name__}")
    height, width = hw(image_size)
    if min(height, width) < 8:
        raise ValueError(f"image_size must be at least 8 on each side, got {image_size}")
    if isinstance(cfg, (A.BasicTransform, A.BaseCompose)):
        return AlbumentationsAugment(cfg)
    if isinstance(cfg, str):
        cfg = AugConfig(preset=cfg)  # type: ignore[arg-type]
    if not isinstance(cfg, AugConfig):
        raise TypeError(f"cfg must be an AugConfig, a preset name or an albumentations transform, "
                        f"got {type(cfg).__name__}")
    if cfg.file:
        augment = AlbumentationsAugment(load_pipeline(cfg.file), source=str(cfg.file))
        try:  # fail now, naming the file, rather than inside a DataLoader worker
            augment(np.zeros((height, width), dtype=np.uint8), 0)
        except Exception as exc:
            raise OkkhorError(f"{cfg.file}: the pipeline fails on a {height}x{width} uint8 image "
                              f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})") from None
        return augment
    if cfg.preset == "none":
        return None
    return AlbumentationsAugment(preset_pipeline(cfg.preset, min(height, width)), source=f"aug.preset={cfg.preset}")
