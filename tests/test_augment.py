"""Augmentation presets and aug.file: shape/dtype/background kept, deterministic per seed, picklable, loadable."""
from __future__ import annotations

import pickle

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from okkhor.config import AugConfig
from okkhor.data.augment import AlbumentationsAugment, StrokeWidth, build_augment, load_pipeline, preset_pipeline
from okkhor.data.dataset import GraphemeDataset
from okkhor.errors import OkkhorError

SIZE = 48
PRESETS = ("light", "medium", "heavy")


def glyph(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Bright strokes on black, like the prepare cache."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    for _ in range(4):
        p, q = rng.integers(size // 6, size - size // 6, size=(2, 2))
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), 255, max(2, size // 16))
    cv2.circle(img, (size // 2, size // 2), size // 4, 200, max(2, size // 16))
    return img


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keeps_shape_dtype_background_and_ink(preset):
    augment = build_augment(AugConfig(preset=preset), SIZE)
    img = glyph()
    for seed in range(12):
        out = augment(img, seed)
        assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
        assert 0 <= out.min() and out.max() <= 255
        assert out.sum() > 0.2 * img.sum()       # the glyph survives
    blank = np.zeros((SIZE, SIZE), np.uint8)
    assert all(augment(blank, s).max() == 0 for s in range(12))   # borders and holes are filled with black


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_repeats_under_a_seed_and_varies_across_seeds(preset):
    augment = build_augment(preset, SIZE)
    img = glyph()
    first = [augment(img, s) for s in range(8)]
    augment(img, 12345)                            # earlier calls must not matter
    again = [augment(img, s) for s in reversed(range(8))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert len({a.tobytes() for a in first}) >= 6
    clone = pickle.loads(pickle.dumps(augment))    # what a DataLoader worker gets
    assert all(np.array_equal(clone(img, s), first[s]) for s in range(8))


def test_nested_transforms_draw_independently():
    # albumentations' own set_random_seed gives every transform the same stream: the two flips would then
    # always agree; seeded per position they take all four combinations
    augment = AlbumentationsAugment(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]))
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    combos = set()
    for s in range(64):
        out = augment(img, s)
        combos.add((bool(np.array_equal(out, img[:, ::-1]) or np.array_equal(out, img[::-1, ::-1])),
                    bool(np.array_equal(out, img[::-1]) or np.array_equal(out, img[::-1, ::-1]))))
    assert combos == {(False, False), (False, True), (True, False), (True, True)}


def test_dataloader_workers_do_not_change_results_and_persistent_workers_see_every_epoch():
    """The epoch travels with the sampler's (position, epoch) pairs: one loader with persistent workers gives, in
    every epoch, exactly the images a serial loader gives, and epoch 2's augmentations differ from epoch 1's."""
    from okkhor.data.sets import EpochBatches
    from okkhor.training.step import BatchPlan

    images = np.stack([glyph(seed=i) for i in range(8)])
    ds = GraphemeDataset(images, np.zeros((8, 1), np.int64), augment=build_augment("medium", SIZE), seed=3)
    batches = {w: EpochBatches(8, BatchPlan(4), seed=1) for w in (0, 2)}
    loaders = {0: DataLoader(ds, batch_sampler=batches[0], num_workers=0),
               2: DataLoader(ds, batch_sampler=batches[2], num_workers=2, persistent_workers=True)}
    seen = {}
    for epoch in (1, 2):
        for w in (0, 2):
            batches[w].set_epoch(epoch)
            seen[w, epoch] = torch.cat([x for x, _ in loaders[w]])
        assert seen[0, epoch].dtype == torch.uint8 and seen[0, epoch].shape == (8, 1, SIZE, SIZE)
        assert torch.equal(seen[0, epoch], seen[2, epoch])
    order = {e: [i for b in (batches[0].set_epoch(e) or batches[0]) for i, _ in b] for e in (1, 2)}
    direct = {e: torch.stack([ds[(i, e)][0] for i in range(8)]) for e in (1, 2)}
    for e in (1, 2):  # the loader's images are the dataset's for (position, epoch), in the epoch's order
        assert torch.equal(seen[0, e], direct[e][order[e]])
    assert not torch.equal(direct[1], direct[2])


def test_none_preset_and_argument_checks():
    assert build_augment(AugConfig(), SIZE) is None
    assert build_augment("none", SIZE) is None
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augment("wild", SIZE)
    with pytest.raises(TypeError):
        build_augment(3, SIZE)
    with pytest.raises(TypeError):
        build_augment("light", 48.0)
    with pytest.raises(TypeError):
        AlbumentationsAugment("light")


@pytest.mark.parametrize("suffix,fmt", [(".yaml", "yaml"), (".json", "json")])
def test_aug_file_round_trip(tmp_path, suffix, fmt):
    path = tmp_path / f"pipeline{suffix}"
    A.save(preset_pipeline("heavy", SIZE), str(path), data_format=fmt)
    from_file = build_augment(AugConfig(preset="none", file=str(path)), SIZE)   # the file wins over the preset
    preset = build_augment("heavy", SIZE)
    img = glyph()
    assert all(np.array_equal(from_file(img, s), preset(img, s)) for s in range(6))


def test_aug_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(OkkhorError, match="nope.yaml: augmentation file not found"):
        build_augment(AugConfig(file=str(missing)), SIZE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("transform:\n  __class_fullname__: NoSuchTransform\n  p: 1.0\n")
    with pytest.raises(OkkhorError, match="bad.yaml: not an albumentations pipeline"):
        load_pipeline(bad)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(OkkhorError, match="garbage.json"):
        build_augment(AugConfig(file=str(garbage)), SIZE)
    resize = tmp_path / "resize.yaml"
    A.save(A.Compose([A.Resize(16, 16)]), str(resize), data_format="yaml")
    with pytest.raises(OkkhorError, match="resize.yaml: the pipeline fails"):
        build_augment(AugConfig(file=str(resize)), SIZE)


def test_stroke_width_thickens_and_thins():
    img = glyph()
    thick = StrokeWidth(kernel_range=(3, 3), dilate_prob=1.0, p=1.0)
    thin = StrokeWidth(kernel_range=(3, 3), dilate_prob=0.0, p=1.0)
    assert AlbumentationsAugment(thick)(img, 0).astype(int).sum() > img.astype(int).sum()
    assert AlbumentationsAugment(thin)(img, 0).astype(int).sum() < img.astype(int).sum()
    assert np.array_equal(AlbumentationsAugment(StrokeWidth(kernel_range=(1, 1), p=1.0))(img, 0), img)
    with pytest.raises(ValueError):
        StrokeWidth(kernel_range=(3, 2))
