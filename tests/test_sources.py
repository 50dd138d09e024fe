"""Several data sources in one run: the sampler's shares, per-source validation rows, evaluate, resume and errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import FAST, assert_one_line_error, cli
from okkhor.config import load_config
from okkhor.data.folds import read_folds
from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache
from okkhor.data.sets import EpochBatches, StackedImages, epoch_counts, source_weights
from okkhor.errors import OkkhorError
from okkhor.inference.predict import ensemble_probs, load_members
from okkhor.io import checkpoint
from okkhor.io.labels import load_targets
from okkhor.metrics import hierarchical_recall
from okkhor.training import testing
from okkhor.training.step import BatchPlan

# fp32 evaluation (no bf16 autocast on CPUs that have it), so the trainer's scores equal an fp32 prediction's; a
# constant lr high enough that one epoch learns something (the two sources then score differently)
ONE_EPOCH = FAST + ["train.epochs=1", "train.amp=off", "train.schedule=constant", "train.lr=3e-3"]


def sets(config: list[str]) -> list[str]:
    return [a for kv in config for a in ("--set", kv)]


# ------------------------------------------------------------------------------------------- the sampler

def draws(batches: EpochBatches, epoch: int) -> np.ndarray:
    batches.set_epoch(epoch)
    return np.array([i for batch in batches for i, _ in batch])


def test_two_sources_are_drawn_in_their_shares_and_each_image_at_most_once_where_the_share_allows():
    """Sources of 30 and 90 images at shares 0.5 / 0.5 over an epoch of 120: 60 draws each, exactly (the counts
    are the shares times the epoch rounded to whole samples: tolerance below one sample); the small source's
    images come exactly twice (a fresh permutation after each pass), the large one's at most once."""
    plan = BatchPlan(16)
    sampler = EpochBatches([30, 90], plan, seed=3, shares=[0.5, 0.5])
    assert sampler.n == 120 and sampler.counts.tolist() == [60, 60]
    for epoch in (1, 2):
        seen = draws(sampler, epoch)
        small, large = seen[seen < 30], seen[seen >= 30]
        assert len(seen) == 120 and len(small) == 60 and len(large) == 60
        assert np.bincount(small, minlength=30).tolist() == [2] * 30
        assert np.bincount(large - 30, minlength=90).max() == 1
        assert 10 < int((seen[:60] < 30).sum()) < 50   # the two are mixed through the epoch, not one after the other
    assert draws(sampler, 1).tolist() == draws(sampler, 1).tolist() != draws(sampler, 2).tolist()

    # by size (no shares): every image of every source exactly once
    by_size = EpochBatches([30, 90], plan, seed=3)
    assert by_size.counts.tolist() == [30, 90]
    assert sorted(draws(by_size, 1).tolist()) == list(range(120))
    # an epoch_size and a share that leaves the rest to the other source by size; two processes split the epoch
    shards = [EpochBatches([20, 60], plan, seed=3, rank_=r, world=2, shares=[0.25, 0], epoch_size=200)
              for r in range(2)]
    assert shards[0].counts.tolist() == [50, 150]
    both = np.concatenate([draws(s, 4) for s in shards])
    assert sorted(np.bincount(both, minlength=80)[:20].tolist()) == [2] * 10 + [3] * 10   # 2 passes and a half
    assert (both < 20).sum() == 50 and len(both) == 200


def test_one_source_keeps_the_order_of_before():
    """A one-source sampler draws today's order: a torch permutation seeded by (seed, epoch) alone."""
    plan = BatchPlan(8)
    for sampler in (EpochBatches(37, plan, seed=11), EpochBatches([37], plan, seed=11, shares=[0.0])):
        sampler.set_epoch(5)
        state = np.random.SeedSequence([11, 5, 0x5A3D]).generate_state(2)
        expected = torch.randperm(37, generator=torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
        assert [i for batch in sampler for i, _ in batch] == expected.tolist()


@pytest.mark.parametrize("shares, sizes, message", [
    ([0.5, 0.4], [10, 10], "sum to 0.9"),
    ([1.0, 0.0], [10, 10], "leave nothing for source 2"),
])
def test_bad_shares_are_one_line(shares, sizes, message):
    with pytest.raises(OkkhorError, match=message):
        source_weights(shares, sizes)


def test_shares_and_counts():
    np.testing.assert_allclose(source_weights([0.2, 0, 0], [10, 30, 50]), [0.2, 0.3, 0.5])
    assert epoch_counts([1 / 3, 1 / 3, 1 / 3], 100).tolist() == [34, 33, 33]
    stacked = StackedImages([np.zeros((2, 4, 5), np.uint8), np.ones((3, 4, 5), np.uint8)])
    assert len(stacked) == 5 and stacked.shape == (5, 4, 5) and stacked[1].max() == 0 and stacked[2].min() == 1
    with pytest.raises(ValueError):
        StackedImages([np.zeros((2, 4, 5)), np.zeros((2, 4, 6))])


# ------------------------------------------------------------------------------------------- a run of two sources

@pytest.fixture(scope="module")
def two(tiny_kaggle_dir, tmp_path_factory):
    """Two tiny sources (48 and 64 images, other drawings), and a one-epoch run on both selecting the second."""
    real = tiny_kaggle_dir(copy=True, n_train=48, n_test=0, seed=1)
    synth = tiny_kaggle_dir(copy=True, n_train=64, n_test=0, seed=2)
    out = tmp_path_factory.mktemp("two") / "run"
    lines: list[str] = []
    cfg = load_config(None, ONE_EPOCH + ["train.select_on=" + synth.root.name])
    result = testing.train([real.root, synth.root], out, cfg, show_progress=False, log=lines.append)
    return real, synth, out, result, lines


def source_valid(data, ckpt) -> tuple[float, dict]:
    """The score of `ckpt` on the source's valid fold (fold 0), computed here from its fp32 predictions."""
    targets = load_targets(data.root)
    images, ids = load_cache(default_cache_dir(data.root, PrepareOptions(32, True)), "train")
    rows = np.flatnonzero(read_folds(data.root / "folds.csv", ids) == 0)
    members = load_members([ckpt], "cpu")
    probs = ensemble_probs(members, {members[0].preprocessing: images}, rows=rows)
    label_of = dict(zip(data.train_ids, data.train_labels.tolist(), strict=True))
    truth = np.array([label_of[ids[r]] for r in rows])
    pred = np.stack([probs[n].argmax(1) for n in targets.names], axis=1)
    return hierarchical_recall(truth, pred, targets)


def test_each_source_has_its_valid_row_equal_to_its_score_computed_by_hand(two):
    real, synth, out, result, lines = two
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(zip(metrics["split"], metrics["source"].fillna(""), strict=True)) == [
        ("train", ""), ("train_clean", ""), ("valid", real.root.name), ("valid", synth.root.name)]
    last = out / "checkpoints" / "last.pt"
    valid = metrics[metrics["split"] == "valid"]
    assert valid["score"].nunique() == 2   # the sources score differently: a swapped row would show
    for data in (real, synth):
        row = metrics[metrics["source"] == data.root.name].iloc[0]
        score, recalls = source_valid(data, last)
        assert row["score"] == pytest.approx(score, abs=1e-9)
        for name, value in recalls.items():
            assert row[f"recall_{name}"] == pytest.approx(value, abs=1e-9)
    # best.pt follows train.select_on (the second source); the result's "valid" is its results
    ckpt = checkpoint.load(last)
    chosen = metrics[metrics["source"] == synth.root.name]["score"].iloc[0]
    assert ckpt["run"]["best_score"] == pytest.approx(chosen) and result["valid"]["score"] == pytest.approx(chosen)
    assert [s["name"] for s in checkpoint.source_records(ckpt)] == [real.root.name, synth.root.name]
    assert sum(ckpt["train_class_counts"]["grapheme_root"]) == 36 + 48      # 3 of 4 folds of each
    assert any(line.startswith("train: sources ") and f"best.pt follows {synth.root.name}" in line for line in lines)
    run = json.loads((out / "run.json").read_text())
    assert [s["name"] for s in run["sources"]] == [real.root.name, synth.root.name]
    assert load_config(out / "config.yaml").train.select_on == synth.root.name


def test_evaluate_takes_each_source_of_a_checkpoint(two, tmp_path):
    real, synth, out, _, _ = two
    code, output = cli("evaluate", out / "checkpoints" / "last.pt", "--out", tmp_path / "ev")
    assert code == 0, output
    metrics = pd.read_csv(out / "metrics.csv")
    for data in (real, synth):
        result = json.loads((tmp_path / "ev" / data.root.name / "metrics.json").read_text())
        assert result["source"] == f"fold 0 of {data.root.name}"
        assert result["score"] == pytest.approx(metrics[metrics["source"] == data.root.name]["score"].iloc[0])
    code, output = cli("evaluate", out / "checkpoints" / "last.pt", "--source", "nope", "--out", tmp_path / "x")
    assert_one_line_error(code, output, "--source nope", real.root.name)


def test_resume_with_other_sources_is_refused_in_one_line(two, tiny_kaggle_dir, tmp_path):
    real, synth, _, _, _ = two
    other = tiny_kaggle_dir(copy=True, n_train=40, n_test=0, seed=3)
    out = tmp_path / "run"
    cfg = load_config(None, FAST + ["train.amp=off"])
    testing.train([real.root, synth.root], out, cfg, show_progress=False, log=lambda m: None, stop_after=1)
    base = ["train", "--out", out, "--resume", "--no-progress", *sets(FAST + ["train.amp=off"])]
    code, output = cli(*base, "--data", real.root, "--data", other.root)
    assert_one_line_error(code, output, "--resume", "source 2", synth.root.name, other.root.name)
    code, output = cli(*base, "--data", real.root)
    assert_one_line_error(code, output, "--resume", "2 source(s)", "this run reads 1")
    code, output = cli(*base, "--data", real.root, "--data", synth.root)   # the same sources: it goes on
    assert code == 0, output
    assert "resuming after epoch 1" in output and len(pd.read_csv(out / "metrics.csv")) == 2 * 4


def test_sources_whose_targets_differ_are_one_line(two, tiny_kaggle_dir, tmp_path):
    real, _, _, _, _ = two
    other = tiny_kaggle_dir(copy=True, n_train=24, n_test=0, classes=(4, 3, 3))
    code, output = cli("train", "--data", real.root, "--data", other.root, "--out", tmp_path / "r", *sets(FAST))
    assert_one_line_error(code, output, "disagree on the targets", "consonant_diacritic has 2 classes",
                          str(other.root / "class_map.csv"))
    code, output = cli("train", "--data", real.root, "--data", real.root, "--out", tmp_path / "r", *sets(FAST))
    assert_one_line_error(code, output, "given twice")
    code, output = cli("train", "--data", real.root, "--data", other.root, "--out", tmp_path / "r",
                       *sets(FAST + ["train.select_on=nope"]))
    assert_one_line_error(code, output, "train.select_on='nope'", real.root.name)
