"""Faults a long run meets: preemption mid-epoch (SIGTERM), kill -9 at points the harness picks, a full disk,
a changed batch plan / process count / folds file on resume, a run dir without a checkpoint yet."""
from __future__ import annotations

import errno
import signal

import pandas as pd
import pytest
import torch

from helpers import FAST
from okkhor.config import load_config
from okkhor.data.folds import split
from okkhor.errors import Interrupted, OkkhorError
from okkhor.io.labels import load_targets
from okkhor.training import testing
from okkhor.training.train import train


@pytest.fixture(scope="module")
def data(prepared_tiny_kaggle):
    return prepared_tiny_kaggle()


QUIET = {"show_progress": False, "log": lambda m: None}


def _harness():
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("okkhor_faults", Path(__file__).parents[1] / "tools" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


faults = _harness()
# the harness's run: mixing, dropout, EMA, accumulation and train.checkpoint_every=2, every piece of state a
# mid-epoch resume must carry
STATEFUL = faults.SETS


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(data.root, out, load_config(None, STATEFUL), **QUIET)
    return faults.values(out)


def test_sigterm_mid_epoch_saves_and_resume_is_exact(data, reference, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, STATEFUL)
    with pytest.raises(Interrupted) as info:
        # SIGTERM in epoch 2 (5 iterations an epoch) at iteration 2: the step of iterations 3-4 (accum 2) finishes
        testing.train(data.root, out, cfg, signal_at=7, **QUIET)
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
    pd.testing.assert_frame_equal(faults.values(out), reference, check_exact=True)


def test_checkpoint_every_saves_mid_epoch(data, tmp_path, monkeypatch):
    """train.checkpoint_every=2 with accum 2: last.pt after iterations 2 and 4 of each 5-iteration epoch, and at
    each epoch's end."""
    from okkhor.training.checkpoints import RunCheckpoints

    saved: list[tuple[int, int]] = []
    real = RunCheckpoints.save_last

    def spy(self, trainer):
        saved.append((trainer.state.epoch, trainer.state.iteration))
        return real(self, trainer)

    monkeypatch.setattr(RunCheckpoints, "save_last", spy)
    train(data.root, tmp_path / "run", load_config(None, STATEFUL), **QUIET)
    assert saved == [(1, 2), (1, 4), (2, 7), (2, 9)]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["trainer"]["epoch"] == 2


def test_kill_9_at_points_the_harness_picks_then_resume_is_exact(data, tmp_path):
    """The fast subset of `make faults`: two SIGKILLs at random delays, each run resumed to the metrics of the
    harness's uninterrupted reference run (a subprocess like the trials: the thread count changes the floats)."""
    lines: list[str] = []
    injected, survived, lost = faults.run_suite(data.root, tmp_path, kills=2, sigterms=0, seed=3, out=lines.append)
    assert lost == 0 and injected == survived >= 1, lines
    assert lines[-1] == f"faults: {injected} injected, {injected} survived, 0 runs lost"


@pytest.mark.parametrize("writer", ["checkpoint", "metrics"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_stops_with_one_line(data, tmp_path, monkeypatch, writer):
    from typer.testing import CliRunner

    from okkhor.cli import app

    calls: list[int] = []
    target = (torch, "save") if writer == "checkpoint" else (pd.DataFrame, "to_csv")
    real = getattr(*target)
    # checkpoints: best.pt and last.pt of epoch 1 are calls 1-2; metrics.csv: the start, epoch 1 and epoch 2
    fail_at = 3

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) >= fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(*target, full)
    result = CliRunner().invoke(app, ["train", "--data", str(data.root), "--out", str(out), "--no-progress",
                                      *sum((["--set", s] for s in FAST), [])])
    monkeypatch.undo()
    name = "checkpoints/" if writer == "checkpoint" else "metrics.csv: could not be written"
    errors = [line for line in result.output.splitlines() if line.startswith("okkhor: error")]
    assert result.exit_code == 2 and "Traceback" not in result.output and len(errors) == 1, result.output
    for needle in (name, "No space left on device", "training stopped", "last.pt is kept", "--resume"):
        assert needle in errors[0], (needle, errors[0])
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["trainer"]["epoch"] == 1
    # metrics.csv is written before the epoch's checkpoint: epoch 2's rows may be there (resume drops them)
    epochs = list(pd.read_csv(out / "metrics.csv")["epoch"])
    assert epochs == ([1, 1, 1] if writer == "metrics" else epochs) and epochs[:3] == [1, 1, 1] and max(epochs) <= 2
    assert not list(out.rglob(".*tmp*"))
    if writer == "checkpoint":  # the disk has room again: the run goes on to its end
        train(data.root, out, load_config(None, FAST), resume=True, **QUIET)
        assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [1, 1, 1, 2, 2, 2]


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory):
    """A run stopped after epoch 1 of 2 (the tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("one") / "run"
    testing.train(data.root, out, load_config(None, FAST), stop_after=1, **QUIET)
    return out


@pytest.mark.parametrize("change, needles", [
    (["train.batch_size=8"], ["batch plan changed", "train.batch_size (16 -> 8)", "--set train.batch_size=16"]),
    (["train.accum=2"], ["batch plan changed", "train.accum (1 -> 2)"]),
])
def test_a_changed_batch_plan_on_resume_is_refused_in_one_line(data, one_epoch, change, needles):
    from typer.testing import CliRunner

    from helpers import assert_one_line_error
    from okkhor.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(data.root), "--out", str(one_epoch), "--resume",
                                      *sum((["--set", s] for s in change), [])])
    assert_one_line_error(result.exit_code, result.output, *needles)
    assert "batch_size: 16" in (one_epoch / "config.yaml").read_text()  # not rewritten with the refused value


def test_a_changed_process_count_on_resume_is_refused(data, one_epoch, tmp_path):
    import shutil

    run = shutil.copytree(one_epoch, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["trainer"]["world_size"] = 2  # as if trained by two processes
    torch.save(ckpt, last)
    with pytest.raises(OkkhorError, match="trained with 2 processes and this run has 1"):
        train(data.root, run, load_config(None, FAST), resume=True, **QUIET)


def test_a_re_split_folds_file_is_refused_by_resume_and_evaluate(data, one_epoch, tmp_path):
    import shutil

    from okkhor.inference.evaluate import evaluate

    folds = data.root / "folds.csv"
    kept = tmp_path / "folds.csv"
    shutil.copy(folds, kept)
    try:
        split(data.root, load_targets(data.root), folds=4, seed=7)
        with pytest.raises(OkkhorError, match="folds.csv: is not the split .*last.pt was trained with"):
            train(data.root, one_epoch, load_config(None, FAST), resume=True, **QUIET)
        with pytest.raises(OkkhorError, match="folds.csv: is not the split .*best.pt was trained with"):
            evaluate(one_epoch / "checkpoints" / "best.pt", data.root, fold=0, show_progress=False)
    finally:
        shutil.copy(kept, folds)


def test_resume_without_a_checkpoint_starts_from_the_beginning(data, tmp_path):
    """Killed before the first checkpoint: metrics rows but no last.pt. --resume starts cleanly."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch,split,loss\n1,train,9.9\n")
    lines: list[str] = []
    testing.train(data.root, out, load_config(None, FAST), resume=True, show_progress=False, log=lines.append,
           stop_after=1)
    assert any("holds no checkpoint yet; starting from the beginning" in m for m in lines)
    df = pd.read_csv(out / "metrics.csv")
    assert list(df["epoch"]) == [1, 1, 1] and 9.9 not in df["loss"].tolist()


# ------------------------------------------------------------------------------------------- two nodes

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(data, out, *sets: str, resume: bool = False) -> str:
    """Two torchrun launchers (one process each) on this machine, meeting at a static rendezvous on loopback.

    Static (``--node-rank``, node 0 hosts the store) rather than c10d: a c10d launcher's shutdown talks to the
    store, which races with the other launcher's exit and failed the test now and then after training had run.
    """
    import os
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    train = ["-m", "okkhor", "train", "--data", str(data.root), "--out", str(out), "--no-progress",
             *(["--resume"] if resume else []),
             *sum((["--set", s] for s in (*FAST, "train.device=cpu", "train.schedule=constant", *sets)), [])]
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}", *train] for rank in range(2)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in cmds]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    return "".join(outputs)


def test_two_nodes_write_one_run_and_resume_exactly(data, tmp_path):
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.data.sets import load_run_data
    from okkhor.models.model import load_for_inference
    from okkhor.training.step import Precision, create_evaluator, run_evaluator

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    output = _two_nodes(data, straight)
    assert output.count("x 2 processes") == 1 and output.count("epoch 2/2") == 1  # only the first process prints
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    metrics = pd.read_csv(straight / "metrics.csv")
    rows = list(zip(metrics["epoch"], metrics["split"], strict=True))
    assert rows == [(1, "train"), (1, "train_clean"), (1, "valid"), (2, "train"), (2, "train_clean"), (2, "valid")]
    # the valid rows cover the whole valid fold once: the same score and loss as one process evaluating the
    # checkpoint with the trainer's evaluator
    last = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert last["trainer"]["world_size"] == 2
    model, cfg, targets, _ = load_for_inference(straight / "checkpoints" / "last.pt")
    run_data = load_run_data(data.root, cfg, targets, show_progress=False)
    loader = torch.utils.data.DataLoader(GraphemeDataset(run_data.images, run_data.labels, run_data.valid_idx),
                                         batch_size=64)
    alone = run_evaluator(create_evaluator(model, targets, cfg.train.loss_weights, Precision("cpu")), model, loader)
    assert len(run_data.valid_idx) == 24
    valid = metrics[metrics.split == "valid"].iloc[-1]
    assert alone["score"] == pytest.approx(valid["score"], abs=1e-9)
    # the loss is a float32 mean over other batches (two shards against one loader): equal to float32 rounding
    assert alone["loss"] == pytest.approx(valid["loss"], rel=1e-4)
    _two_nodes(data, resumed, "train.epochs=1")
    _two_nodes(data, resumed, "train.epochs=2", resume=True)
    pd.testing.assert_frame_equal(faults.values(resumed), faults.values(straight), check_exact=True)
