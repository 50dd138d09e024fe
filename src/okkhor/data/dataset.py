"""Datasets over the prepared cache: uint8 image tensors (scaled to [0, 1] on the device by `normalize`),
optional augmentation seeded by (seed, epoch, row), labels per target."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

# an augmentation takes (image uint8 [H, W], seed) and returns an image uint8 [H, W]
Augment = Callable[[np.ndarray, int], np.ndarray]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (bright ink on black) -> float32 in [0, 1], on x's device; float input is returned as is.
    The one place input scaling lives: loaders send uint8 (a quarter of float32's bytes) and the device scales."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W] -> float32 [n, 1, H, W] in [0, 1] (normalize, on the CPU)."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1))


def sample_seed(base: int, epoch: int, index: int) -> int:
    """A per-sample augmentation seed that depends only on (base seed, epoch, sample index)."""
    return int(np.random.SeedSequence([base & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class GraphemeDataset(Dataset):
    """Images from the cache (memory-mapped) with labels [n, T]; `indices` selects the rows used.

    An item is uint8 [1, H, W] (and its labels): the device scales it (`normalize`, via Precision.images). The
    key is a position i, or a pair (i, epoch) as okkhor.data.sets.EpochBatches yields them: augmentation is
    seeded per (seed, epoch, row), and the epoch travels with the key rather than in the dataset object, so
    persistent workers see every epoch's augmentations and results do not depend on worker count or order.
    """

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], indices: Optional[np.ndarray] = None,
                 augment: Optional[Augment] = None, seed: int = 0):
        if images.ndim != 3:
            raise ValueError(f"images must be [n, H, W], got shape {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} label rows for {len(images)} images")
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment = augment
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        row = int(self.indices[i])
        img = np.array(self.images[row])  # a writable copy: the cache is a read-only memmap
        if self.augment is not None:
            img = self.augment(img, sample_seed(self.seed, int(epoch), row))
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.uint8)).unsqueeze(0)
        if self.labels is None:
            return x
        return x, torch.from_numpy(self.labels[row])
