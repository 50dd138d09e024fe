"""Shared fixtures: tiny Kaggle-format data sets, made once per test session."""
from __future__ import annotations

import os
import tempfile

import pytest

from helpers import TinyKaggle, copy_tiny_kaggle, make_tiny_kaggle

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# tests see the PyPI fonts only, never a font library that `make setup` fetched into the user cache
os.environ["OKKHOR_FONT_CACHE"] = tempfile.mkdtemp(prefix="okkhor-test-fonts-")


@pytest.fixture(scope="session")
def tiny_kaggle_dir(tmp_path_factory):
    """Factory: `tiny_kaggle_dir(copy=False, **make_tiny_kaggle kwargs) -> TinyKaggle` (`.root` is the folder).

    Data sets are made once per session for each set of arguments and shared; treat them as read-only, or pass
    copy=True for a private copy that a test may write caches, folds or runs into.
    """
    made: dict[tuple, TinyKaggle] = {}

    def make(copy: bool = False, **kwargs) -> TinyKaggle:
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
        if key not in made:
            made[key] = make_tiny_kaggle(tmp_path_factory.mktemp("tiny"), **kwargs)
        data = made[key]
        return copy_tiny_kaggle(data, tmp_path_factory.mktemp("tiny-copy")) if copy else data

    return make


@pytest.fixture(scope="module")
def prepared_tiny_kaggle(tiny_kaggle_dir):
    """Factory: a private tiny data set (96 training images) with its 32 px cache and 4 folds already made."""
    from okkhor.data.folds import split
    from okkhor.data.prepare import prepare
    from okkhor.io.labels import load_targets

    def make():
        tiny = tiny_kaggle_dir(copy=True, n_train=96, n_test=0)
        prepare(tiny.root, size=32, show_progress=False)
        split(tiny.root, load_targets(tiny.root), folds=4, seed=42)
        return tiny

    return make
