"""The trainer: accumulation, convergence, run-dir contract, exact resume, several processes, clear errors."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from typer.testing import CliRunner

from helpers import FAST, assert_one_line_error
from okkhor.cli import app
from okkhor.config import TrainConfig, load_config
from okkhor.data.sets import EpochBatches
from okkhor.io import checkpoint
from okkhor.models.model import load_for_inference
from okkhor.targets import Targets
from okkhor.training import testing
from okkhor.training.optim import build_optimizer
from okkhor.training.step import BatchPlan, TrainStep
from okkhor.training.tracking import metrics_columns
from okkhor.training.train import train

# what every checkpoint of a run holds (okkhor.training.checkpoints.run_objects lists the stateful objects, and
# okkhor.io.checkpoint.meta_record the rest); ema and early_stopping appear when the run has them
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "mixer", "trainer", "run", "meter", "rng", "config",
                   "targets", "train_class_counts", "data")

runner = CliRunner()
VALUE_COLUMNS = ["loss", "score", "recall_grapheme_root", "recall_vowel_diacritic", "recall_consonant_diacritic"]


@pytest.fixture(scope="module")
def data(prepared_tiny_kaggle):
    return prepared_tiny_kaggle()


@pytest.fixture(scope="module")
def two_epoch_run(data, tmp_path_factory):
    """A reference run: 2 epochs, onecycle, data.workers=0."""
    out = tmp_path_factory.mktemp("run") / "ref"
    result = train(data.root, out, load_config(None, FAST), show_progress=False, log=lambda m: None)
    return out, result


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output



def values(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")[["epoch", "split", *VALUE_COLUMNS]]


# ------------------------------------------------------------------------------------------- the training step

class NoNormNet(nn.Module):
    """conv -> relu -> pool -> two heads; no batch norm, so a batch's gradient is the mean of its samples'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.heads = nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 2)])

    def forward(self, x):
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return tuple(head(features) for head in self.heads)


def run_steps(model, batches, accum, optimizer="adamw"):
    """Train `model` over `batches` (one epoch) through the real TrainStep in an ignite Engine."""
    tcfg = TrainConfig(optimizer=optimizer, lr=0.05, weight_decay=0.01)
    step = TrainStep(model, build_optimizer(model, tcfg), BatchPlan(8, accum), [2.0, 1.0])
    engine = Engine(step)
    step.attach(engine)
    engine.run(batches, max_epochs=1)
    return step


def toy_batches(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 8, 8, generator=g),
             torch.stack([torch.randint(0, 3, (size,), generator=g), torch.randint(0, 2, (size,), generator=g)], 1))
            for _ in range(n)]


def merge(batches):
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_four_micro_batches_of_8_update_like_one_batch_of_32(optimizer):
    torch.manual_seed(0)
    a = NoNormNet()
    b, start = copy.deepcopy(a), copy.deepcopy(a)
    micro = toy_batches(4, 8)
    step_a = run_steps(a, micro, accum=4, optimizer=optimizer)
    step_b = run_steps(b, [merge(micro)], accum=1, optimizer=optimizer)
    assert step_a.optimizer_steps == step_b.optimizer_steps == 1
    for pa, pb, p0 in zip(a.parameters(), b.parameters(), start.parameters(), strict=False):
        assert (pa - p0).abs().max() > 1e-4  # the step moved the weights
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)  # tolerance: float32 summation order


def test_short_last_group_of_an_epoch_still_steps_with_its_mean_gradient():
    """6 micro-batches with accum 4: groups of 4 and 2, the same as full batches of 32 and 16."""
    torch.manual_seed(1)
    a = NoNormNet()
    b = copy.deepcopy(a)
    micro = toy_batches(6, 8, seed=3)
    step_a = run_steps(a, micro, accum=4, optimizer="sgd")
    step_b = run_steps(b, [merge(micro[:4]), merge(micro[4:])], accum=1, optimizer="sgd")
    assert step_a.optimizer_steps == step_b.optimizer_steps == 2
    for pa, pb in zip(a.parameters(), b.parameters(), strict=False):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    assert all(p.grad is None for p in a.parameters())  # nothing left over for the next epoch


def test_schedules_count_optimizer_steps_and_bf16_runs_on_cpu():
    from okkhor.training.optim import build_scheduler

    model = NoNormNet()
    onecycle = build_scheduler(build_optimizer(model, TrainConfig(epochs=3)), TrainConfig(epochs=3), 5, 2)
    assert onecycle.scheduler.total_steps == 3 * 3  # epochs * ceil(5 iterations / accum 2)
    optimizer = build_optimizer(model, TrainConfig(lr=1.0))
    cosine = build_scheduler(optimizer, TrainConfig(epochs=4, lr=1.0, schedule="cosine", warmup_epochs=1), 4, 2)
    lrs = []
    for n in range(1, 9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step_update(n)
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] == pytest.approx(1.0) and lrs[2:] == sorted(lrs[2:], reverse=True)
    step = run_steps(NoNormNet(), toy_batches(2, 8), accum=1)
    step.precision.amp = "bf16"
    assert math.isfinite(float(step.micro_step(*toy_batches(1, 8)[0])))


def test_training_loss_halves_on_a_toy_set(data):
    """48 drawn images, the real model and step: after 12 steps the loss is at most half of where it started."""
    from okkhor.config import ModelConfig
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.data.prepare import load_cache
    from okkhor.models.model import build_model

    images, _ = load_cache(data.root / "cache" / "32", "train")
    targets = Targets.make(data.names, data.num_classes)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="test_efficientnet"), targets)
    tcfg = TrainConfig(lr=3e-3, weight_decay=0.0)
    step = TrainStep(model, build_optimizer(model, tcfg), BatchPlan(16), targets.weights)
    loader = torch.utils.data.DataLoader(GraphemeDataset(images, data.train_labels, np.arange(48)), batch_size=16,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    engine = Engine(step)
    step.attach(engine)
    losses = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    engine.run(loader, max_epochs=4)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last <= 0.5 * first, (first, last)


def test_epoch_batches_are_seeded_by_epoch_and_shard_without_overlap():
    plan = BatchPlan(4)
    one = EpochBatches(9, plan, seed=7)
    one.set_epoch(1)
    first = list(one)
    assert list(one) == first
    assert [len(b) for b in first] == [4, 5]  # a last batch of 1 joins the one before
    one.set_epoch(2)
    assert list(one) != first
    shards = [EpochBatches(10, plan, seed=7, rank_=r, world=2) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    seen = [i for s in shards for b in s for i, epoch in b]
    assert sorted(seen) == list(range(10)) and len(shards[0]) == len(shards[1])
    assert {epoch for s in shards for b in s for _, epoch in b} == {1}  # the epoch travels with every index


# ------------------------------------------------------------------------------------------- the run directory

def test_run_dir_contract(data, two_epoch_run):
    out, result = two_epoch_run
    metrics = pd.read_csv(out / "metrics.csv")
    targets = Targets.make(("grapheme_root", "vowel_diacritic", "consonant_diacritic"), (4, 3, 2))
    assert list(metrics.columns) == metrics_columns(targets)
    assert list(metrics.columns) == ["epoch", "split", "source", *VALUE_COLUMNS, "lr", "seconds"]
    rows = list(zip(metrics["epoch"], metrics["split"], strict=True))
    assert rows == [(1, "train"), (1, "train_clean"), (1, "valid"), (2, "train"), (2, "train_clean"), (2, "valid")]
    # the one source's name on its valid rows (its directory's name), none on the others
    assert metrics["source"].fillna("").tolist() == ["", "", data.root.name] * 2
    evaluated = metrics[metrics.split != "train"]
    assert evaluated[VALUE_COLUMNS].notna().all().all()
    train_rows = metrics[metrics.split == "train"]  # the mean training loss of each epoch, no score
    assert train_rows["loss"].between(0.1, 20).all() and train_rows["score"].isna().all()
    assert result["stop_reason"] == "completed" and result["epoch"] == 2
    assert result["valid"]["score"] == metrics[metrics.split == "valid"]["score"].iloc[-1]

    cfg = load_config(out / "config.yaml")  # the resolved config loads as a config file
    assert cfg.data.targets == ["grapheme_root", "vowel_diacritic", "consonant_diacritic"]
    assert cfg.train.loss_weights == [2.0, 1.0, 1.0] and cfg.model.name == "test_efficientnet"
    assert any((out / "tb").iterdir())

    for name in ("last.pt", "best.pt"):
        model, ckpt_cfg, ckpt_targets, ckpt = load_for_inference(out / "checkpoints" / name)
        assert set(CHECKPOINT_KEYS) <= set(ckpt)
        assert ckpt_targets.num_classes == (4, 3, 2) and not model.training
        assert ckpt["run"]["batch"] == {"batch_size": 16, "accum": 1}
        assert sum(ckpt["train_class_counts"]["grapheme_root"]) == 72  # 3 of 4 folds of 96 images
        assert set(ckpt["scheduler"]) >= {"last_epoch", "total_steps"}  # a state_dict, not a pickled object
        assert set(ckpt["rng"]["ranks"][0]) >= {"python", "numpy", "torch"}
        with torch.no_grad():
            out_logits = model(torch.rand(2, 1, 32, 32))
        assert [o.shape[1] for o in out_logits] == [4, 3, 2]
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # plain values only: no pickled objects
    assert set(last) == set(CHECKPOINT_KEYS)  # no ema, no early stopping in this run
    assert last["trainer"]["epoch"] == 2 and last["run"]["finished"] and last["run"]["stop_reason"] == "completed"
    assert last["run"]["best_score"] == metrics[metrics.split == "valid"]["score"].max()
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["run"]["best_epoch"] == last["run"]["best_epoch"] == best["trainer"]["epoch"]
    assert not list((out / "checkpoints").glob(".*tmp*"))


def test_the_report_of_a_trained_run_finds_its_data_through_the_checkpoint(data, two_epoch_run, tmp_path):
    """The trainer records the data dir it read in the checkpoint's data record, so `okkhor report RUN` without
    --data evaluates on it also when the run dir travelled without its run.json (the report read a `data_dir`
    key that no trainer wrote)."""
    import json
    import shutil

    out, result = two_epoch_run
    run = tmp_path / "copied"
    shutil.copytree(out / "checkpoints", run / "checkpoints")
    shutil.copy(out / "metrics.csv", run / "metrics.csv")
    best = checkpoint.load(run / "checkpoints" / "best.pt")
    assert checkpoint.data_dir(best) == data.root.resolve()
    code, output = cli("report", run, "--gallery", 2)
    assert code == 0, output
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["images"] == 24 and metrics["source"] == "fold 0"   # the valid fold: 1 of 4 folds of 96 images
    assert metrics["score"] == pytest.approx(best["run"]["best_score"], abs=1e-9)


def test_resume_continues_exactly_and_workers_do_not_matter(data, two_epoch_run, tmp_path):
    """Stop after epoch 1 (data.workers=2), resume to 2: the same values as the uninterrupted workers=0 run."""
    reference, _ = two_epoch_run
    out = tmp_path / "resumed"
    cfg = load_config(None, FAST + ["data.workers=2"])
    first = testing.train(data.root, out, cfg, show_progress=False, log=lambda m: None, stop_after=1)
    assert first["stop_reason"] == "stop_after" and len(values(out)) == 3
    result = train(data.root, out, cfg, resume=True, show_progress=False, log=lambda m: None)
    assert result["epoch"] == 2
    pd.testing.assert_frame_equal(values(out), values(reference), check_exact=True)


def test_a_run_made_before_sources_existed_resumes_exactly(data, two_epoch_run, tmp_path):
    """A run of one epoch as okkhor wrote it before several sources: metrics.csv without `source`, a checkpoint
    whose config lacks data.sources, data.epoch_size and train.select_on. Resumed, it goes on to the values of the
    uninterrupted run, and its valid rows get the source's name."""
    reference, _ = two_epoch_run
    out = tmp_path / "old"
    cfg = load_config(None, FAST)
    testing.train(data.root, out, cfg, show_progress=False, log=lambda m: None, stop_after=1)
    metrics = pd.read_csv(out / "metrics.csv")
    metrics.drop(columns="source").to_csv(out / "metrics.csv", index=False)
    last = out / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(last)
    for section, key in (("data", "sources"), ("data", "epoch_size"), ("train", "select_on")):
        del ckpt["config"][section][key]
    assert "sources" not in ckpt["data"]
    checkpoint.save(last, ckpt)
    result = train(data.root, out, cfg, resume=True, show_progress=False, log=lambda m: None)
    assert result["epoch"] == 2
    pd.testing.assert_frame_equal(values(out), values(reference), check_exact=True)
    resumed = pd.read_csv(out / "metrics.csv")
    assert resumed.loc[resumed["split"] == "valid", "source"].tolist() == [data.root.name] * 2


def test_persistent_workers_give_the_same_run_as_no_workers(data, two_epoch_run, tmp_path):
    """Two epochs straight with 2 persistent workers (uint8 batches, the epoch in the sampler's indices): the same
    values as the workers=0 reference."""
    reference, _ = two_epoch_run
    out = tmp_path / "workers"
    cfg = load_config(None, FAST + ["data.workers=2", "data.prefetch_factor=1"])
    assert cfg.data.persistent_workers
    train(data.root, out, cfg, show_progress=False, log=lambda m: None)
    pd.testing.assert_frame_equal(values(out), values(reference), check_exact=True)


def test_cli_resume_with_more_epochs_on_a_constant_schedule(data, tmp_path):
    const = FAST + ["train.schedule=constant", "train.lr=1e-3", "train.ema=0.5", "model.dropout=0.2",
                    "train.accum=2"]
    once = tmp_path / "once"
    code, output = cli("train", "--data", data.root, "--out", once,
                       *sum((["--set", s] for s in const + ["train.epochs=1"]), []))
    assert code == 0, output
    # progress off a terminal: whole lines (one per epoch here), no carriage-return redraws
    assert "\r" not in output and "epoch 1/1: 100%|| 5/5 [" in output
    assert "effective batch 32 = batch 16 x accum 2 x 1 process; 5 iterations and 3 optimizer steps" in output
    code, output = cli("train", "--data", data.root, "--out", once, "--resume", "--no-progress", "--set",
                       "train.epochs=2")
    assert code == 0, output
    assert "resuming after epoch 1" in output and "epoch 2/2" in output
    straight = tmp_path / "straight"
    train(data.root, straight, load_config(None, const), show_progress=False, log=lambda m: None)
    pd.testing.assert_frame_equal(values(once), values(straight), check_exact=True)
    assert load_for_inference(once / "checkpoints" / "last.pt")[3]["ema"] is not None

    code, output = cli("train", "--data", data.root, "--out", once, "--resume", "--set", "train.lr=0.5")
    assert_one_line_error(code, output, "--resume", "train.lr")
    code, output = cli("train", "--data", data.root, "--out", once, "--set", "train.epochs=1")
    assert_one_line_error(code, output, "already holds a run", "--resume")


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import okkhor.training.loss

    real = okkhor.training.loss.multihead_loss

    def poisoned(logits, mixed, *args, **kwargs):
        loss = real(logits, mixed, *args, **kwargs)
        return loss * float("nan") if calls.append(1) or len(calls) > 6 else loss

    calls: list[int] = []
    monkeypatch.setattr(okkhor.training.loss, "multihead_loss", poisoned)  # the training loss only
    out = tmp_path / "nan"
    code, output = cli("train", "--data", data.root, "--out", out, "--no-progress", *sum(
        (["--set", s] for s in FAST + ["train.epochs=3"]), []))
    lines = [line for line in output.splitlines() if line.startswith("okkhor: error")]
    assert code == 2 and "Traceback" not in output
    assert len(lines) == 1 and "loss became nan at epoch 2" in lines[0] and "last good checkpoint" in lines[0]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["trainer"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 1, 1]


def test_early_stopping_on_a_flat_valid_score_with_the_bengali_map(tiny_kaggle_dir, tmp_path, monkeypatch):
    import okkhor.training.handlers

    bengali = tiny_kaggle_dir(copy=True, classes=None, n_train=64, n_test=0)
    flat = {"loss": 1.0, "score": 0.5, **{f"recall_{n}": 0.5 for n in bengali.names}}
    monkeypatch.setattr(okkhor.training.handlers.Evaluation, "evaluate", lambda self, split: dict(flat))
    result = train(bengali.root, tmp_path / "es", load_config(None, FAST + ["train.epochs=5", "train.patience=1"]),
                   show_progress=False, log=lambda m: None)
    assert result["stop_reason"] == "early_stopping" and result["epoch"] == 2 and result["best_epoch"] == 1
    ckpt = torch.load(tmp_path / "es" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["targets"]["num_classes"] == [168, 11, 7] and ckpt["early_stopping"]["counter"] == 1
    assert len(ckpt["train_class_counts"]["grapheme_root"]) == 168
    assert (bengali.root / "folds.csv").is_file() and (bengali.root / "cache" / "32" / "train.npy").is_file()


# ------------------------------------------------------------------------------------------- several processes

# the CLI, and at exit (before the interpreter tears down) how many DDP models are still alive: one left over is
# freed by a cyclic collection that can fall in interpreter shutdown, where gloo's threads abort the process
CLI_THEN_COUNT_DDP = """
import atexit, gc
def count():
    from torch.nn.parallel import DistributedDataParallel
    print("DDP models alive at exit:", sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
atexit.register(count)
from okkhor.cli import main
main()
"""


def test_two_processes_with_gloo_write_one_run(data, tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "okkhor_cli.py"
    script.write_text(CLI_THEN_COUNT_DDP)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "train", "--data", str(data.root), "--out", str(out), "--no-progress",
           *sum((["--set", s] for s in FAST + ["train.device=cpu"]), [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("effective batch 32 = batch 16 x accum 1 x 2 processes") == 1
    assert proc.stdout.count("epoch 2/2") == 1
    assert proc.stdout.count("DDP models alive at exit: 0") == 2, proc.stdout  # freed while the group was up
    metrics = pd.read_csv(out / "metrics.csv")
    rows = list(zip(metrics["epoch"], metrics["split"], strict=True))
    assert rows == [(1, "train"), (1, "train_clean"), (1, "valid"), (2, "train"), (2, "train_clean"), (2, "valid")]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((out / "tb").iterdir())) == 1
    load_for_inference(out / "checkpoints" / "best.pt")


# ------------------------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("args, needles", [
    (["--set", "train.lrr=1"], ["unknown config key 'train.lrr'", "valid keys"]),
    (["--set", "train.epochs=abc"], ["bad value 'abc' for 'train.epochs'"]),
    (["--set", "train.amp=fp16", "--set", "train.device=cpu"], ["train.amp=fp16 needs a CUDA device"]),
    (["--resume"], ["data directory not found"]),  # --resume without a checkpoint yet starts afresh
])
def test_bad_config_is_one_clear_line(tmp_path, args, needles):
    code, output = cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", *args)
    assert_one_line_error(code, output, *needles)


def test_bad_key_in_a_config_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  lr_max: 0.1\n")
    code, output = cli("train", "--data", tmp_path, "--out", tmp_path / "run", "--config", path)
    assert_one_line_error(code, output, str(path), "train.lr_max")


def test_batch_size_auto_takes_the_plan_from_choose_batch(monkeypatch):
    import types

    from okkhor.training.train import initial_batch_plan

    calls = []
    fake = types.SimpleNamespace(choose_batch=lambda model, cfg, device: calls.append(cfg) or (8, 4))
    monkeypatch.setitem(sys.modules, "okkhor.training.memory", fake)
    cfg = load_config(None, ["train.batch_size=auto", "train.effective_batch=32"])
    plan = initial_batch_plan(cfg, nn.Linear(1, 1), torch.device("cpu"))
    assert (plan.batch_size, plan.accum) == (8, 4) and calls == [cfg]
    assert initial_batch_plan(load_config(None, ["train.batch_size=24", "train.accum=3"]), None, "cpu") == \
        BatchPlan(24, 3)

