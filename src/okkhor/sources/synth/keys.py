"""The random streams of a synthetic dataset: each a function of the seed and its own key, so any process draws it."""
from __future__ import annotations

import numpy as np

SPLIT_CODES = {"train": 0, "test": 1}
LABELS_STREAM = 1 << 30  # spawn key of a split's labels, beside its split code
DRAWS_STREAM = 2 << 30  # spawn key of a split's drawing plan (faces, styles)
UNSEEN_STREAM = 99  # spawn key of the division of the unseen triples between train and test
GRAIN_SEED = 2020  # the paper grain texture, the same in every dataset and process


def split_rng(seed: int, split: str, stream: int) -> np.random.Generator:
    """The generator of one of a split's streams (LABELS_STREAM, DRAWS_STREAM)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], stream)))


def unseen_rng(seed: int) -> np.random.Generator:
    """The generator that divides the unseen triples between train and test: a function of the seed alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(UNSEEN_STREAM,)))


def _image_key(seed: int, split: str, index: int) -> tuple[int, int]:
    return seed, (SPLIT_CODES[split] << 40) | index


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, split, index) only, so any worker draws the same."""
    return np.random.Generator(np.random.Philox(key=np.array(_image_key(seed, split, index), dtype=np.uint64)))


class ImageRngs:
    """image_rng's streams from one reused generator: re-keying a Philox is cheaper than building one."""

    def __init__(self):
        self._bits = np.random.Philox(0)
        self._gen = np.random.Generator(self._bits)
        self._state = self._bits.state

    def __call__(self, seed: int, split: str, index: int) -> np.random.Generator:
        st = self._state
        st["state"]["key"][:] = _image_key(seed, split, index)
        st["state"]["counter"][:] = 0
        st["buffer_pos"], st["has_uint32"], st["uinteger"] = 4, 0, 0
        self._bits.state = st
        return self._gen
