"""Datasets over the prepared cache: uint8 images -> float tensors, optional augmentation, labels per target."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

# an augmentation takes (image uint8 [S, S], seed) and returns an image uint8 [S, S]
Augment = Callable[[np.ndarray, int], np.ndarray]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, S, S] (bright ink on black) -> float32 [n, 1, S, S] in [0, 1]. The one place input scaling lives."""
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)


def sample_seed(base: int, epoch: int, index: int) -> int:
    """A per-sample augmentation seed that depends only on (base seed, epoch, sample index)."""
    return int(np.random.SeedSequence([base & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class GraphemeDataset(Dataset):
    """Images from the cache (memory-mapped) with labels [n, T]; `indices` selects the rows used.

    Augmentation is seeded per (seed, epoch, index) so results do not depend on worker count or order.
    Call `set_epoch` before each epoch's loader iterator is created.
    """

    def __init__(self, images: np.ndarray, labels: Optional[np.ndarray], indices: Optional[np.ndarray] = None,
                 augment: Optional[Augment] = None, seed: int = 0):
        if images.ndim != 3:
            raise ValueError(f"images must be [n, S, S], got shape {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} label rows for {len(images)} images")
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = np.array(self.images[row])  # a writable copy: the cache is a read-only memmap
        if self.augment is not None:
            img = self.augment(img, sample_seed(self.seed, self.epoch, row))
        x = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0).float().div_(255.0)
        if self.labels is None:
            return x
        return x, torch.from_numpy(self.labels[row])
