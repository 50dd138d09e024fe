"""Faults a long run meets: preemption mid-epoch (SIGTERM), kill -9 at points the harness picks, a full disk,
a changed batch plan / process count / folds file on resume, a run dir without a checkpoint yet."""
from __future__ import annotations

import errno
import signal

import pandas as pd
import pytest
import torch

from okkhor.config import load_config
from okkhor.data.folds import split
from okkhor.data.kaggle import load_targets
from okkhor.data.prepare import prepare
from okkhor.errors import Interrupted, OkkhorError, WriteError
from okkhor.train import _train, train

FAST = ["model.name=test_efficientnet", "data.image_size=32", "data.folds=4", "train.batch_size=16",
        "data.workers=0", "eval.train_clean_size=32", "eval.batch_size=64", "train.epochs=2"]
# on CPU a resumed run must give these columns exactly (seconds is wall time)
EXACT = ["epoch", "split", "loss", "score", "recall_grapheme_root", "recall_vowel_diacritic",
         "recall_consonant_diacritic", "lr"]
QUIET = {"show_progress": False, "log": lambda m: None}


@pytest.fixture(scope="module")
def data(tiny_kaggle_dir):
    tiny = tiny_kaggle_dir(copy=True, n_train=96, n_test=0)
    prepare(tiny.root, size=32, show_progress=False)
    split(tiny.root, load_targets(tiny.root), folds=4, seed=42)
    return tiny


# mixing, dropout, EMA and accumulation: every piece of state a mid-epoch resume must carry
STATEFUL = FAST + ["mix.kind=cutmix", "mix.prob=0.5", "model.dropout=0.2", "train.ema=0.5", "train.accum=2",
                   "aug.preset=light"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(data.root, out, load_config(None, STATEFUL), **QUIET)
    return pd.read_csv(out / "metrics.csv")[EXACT]


def test_sigterm_mid_epoch_saves_and_resume_is_exact(data, reference, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, STATEFUL)
    with pytest.raises(Interrupted) as info:
        # SIGTERM in epoch 2 (5 iterations an epoch) at iteration 2: the step of iterations 3-4 (accum 2) finishes
        _train(data.root, out, cfg, signal_at=7, **QUIET)
    line = str(info.value)
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert line.startswith("train: stopped by SIGTERM at epoch 2, iteration 4/5") and "--resume" in line
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["epoch"] == 1 and ckpt["trainer"]["epoch_iteration"] == 4
    assert ckpt["meter"]["iterations"] == 4
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 1, 1]
    lines: list[str] = []
    train(data.root, out, cfg, resume=True, show_progress=False, log=lines.append)
    assert any("resuming in epoch 2 after iteration 4" in m for m in lines)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv")[EXACT], reference, check_exact=True)
