"""Checkpoints: every stateful object round-trips through ignite; the file format (okkhor.io.checkpoint); adapters."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from timm.utils import ModelEmaV3

from okkhor.config import MixConfig, TrainConfig
from okkhor.errors import OkkhorError, WriteError
from okkhor.io import checkpoint
from okkhor.training.checkpoints import GlobalRng, PerProcess, RunCheckpoints, TrainerState
from okkhor.training.handlers import RunState
from okkhor.training.mixing import Mixer
from okkhor.training.optim import build_optimizer, build_scheduler
from okkhor.training.step import BatchPlan, TrainStep


def same(a, b) -> bool:
    """Deep equality of state dicts (tensors by value)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=False))
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def make_objects(seed: int):
    """One of each kind of stateful object a run checkpoints, advanced by a few steps so none is at its start."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                              torch.nn.LazyLinear(2))
    net(torch.rand(2, 1, 6, 6))
    tcfg = TrainConfig(lr=0.1, epochs=3, schedule="onecycle")
    optimizer = build_optimizer(net, tcfg)
    schedule = build_scheduler(optimizer, tcfg, 4, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ema = ModelEmaV3(net, decay=0.9)
    mixer = Mixer(MixConfig(kind="mixup"), seed=seed)
    plan = BatchPlan(8, 2)
    step = TrainStep(net, optimizer, plan, [1.0])
    trainer = Engine(lambda engine, batch: None)
    state = RunState(plan, max_epochs=3)
    early = EarlyStopping(2, state.valid_score, trainer)
    for n in range(1, 4):
        net(torch.rand(2, 1, 6, 6)).sum().backward()
        optimizer.step()
        schedule.step_update(n)
        ema.update(net, step=n)
        mixer.plan((2, 1, 6, 6), epoch=1)
    step.optimizer_steps = 3 + seed
    trainer.run([0] * 4, max_epochs=1)
    state.record(1, {"valid": {"score": 0.25 + seed, "loss": 1.0}})
    early(trainer)
    random.random(), np.random.rand(), torch.rand(1)
    to_load = {"model": net, "ema": ema.module, "optimizer": optimizer, "scheduler": schedule, "scaler": scaler,
               "mixer": PerProcess(mixer), "trainer": TrainerState(trainer, step, lambda: 4, 3), "run": state,
               "early_stopping": early, "rng": PerProcess(GlobalRng())}
    return to_load


def test_a_checkpoint_round_trips_every_stateful_object(tmp_path):
    saved = make_objects(seed=0)
    expected = {k: obj.state_dict() for k, obj in saved.items()}
    meta = {"config": {"seed": 1}, "targets": {"names": ["a"]}, "train_class_counts": {"a": [1, 2]}}
    checkpoints = RunCheckpoints(tmp_path, saved, meta, lambda engine: 0.5)
    checkpoints(saved["trainer"].trainer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)   # plain values only
    assert set(ckpt) == set(saved) | set(meta) and ckpt["config"] == {"seed": 1}

    other = make_objects(seed=1)  # the same kinds of objects in another state
    assert not any(same(expected[k], other[k].state_dict()) for k in ("model", "ema", "optimizer", "run", "mixer"))
    RunCheckpoints(tmp_path, other, meta, lambda engine: 0.5).resume(ckpt, best_score=0.5)
    for key, obj in other.items():
        assert same(obj.state_dict(), expected[key]), key
    assert other["trainer"].trainer.state.epoch == 1 and other["run"].plan == BatchPlan(8, 2)


def test_best_is_written_only_when_the_score_improves_also_after_resume(tmp_path):
    objects = make_objects(seed=0)
    trainer = objects["trainer"].trainer
    score = {"now": 0.5}
    meta = {"config": {}, "targets": {}, "train_class_counts": {}}
    checkpoints = RunCheckpoints(tmp_path, objects, meta, lambda engine: score["now"])
    best = tmp_path / "best.pt"

    def saved_with(value: float) -> int:  # the file's inode: an atomic save makes a new one
        score["now"] = value
        checkpoints(trainer)
        return best.stat().st_ino

    first = saved_with(0.5)
    assert saved_with(0.4) == first
    last = (tmp_path / "last.pt").stat().st_ino
    checkpoints = RunCheckpoints(tmp_path, objects, meta, lambda engine: score["now"])  # a resumed run
    checkpoints.resume(torch.load(tmp_path / "last.pt", weights_only=True), best_score=0.5)
    assert saved_with(0.45) == first  # does not beat the resumed best 0.5
    assert (tmp_path / "last.pt").stat().st_ino != last  # last.pt is replaced every time
    assert saved_with(0.7) != first


def test_resume_from_a_checkpoint_without_the_run_state_is_one_line(tmp_path):
    objects = make_objects(seed=0)
    meta = {"config": {}, "targets": {}, "train_class_counts": {}}
    ckpt = {k: v.state_dict() for k, v in objects.items() if k != "run"}
    with pytest.raises(OkkhorError, match="cannot resume from this checkpoint \\(no run"):
        RunCheckpoints(tmp_path, objects, meta, lambda engine: 0.0).resume(ckpt)


# ------------------------------------------------------------------------------------ the file (okkhor.io.checkpoint)

def a_checkpoint(tmp_path, ema: bool = False) -> dict:
    weights = {"w": torch.arange(3.0)}
    data = checkpoint.data_record({"folds": "f" * 64, "cache": "c" * 64}, tmp_path / "data")
    return {checkpoint.MODEL: weights, checkpoint.EMA: {"w": torch.full((3,), 7.0)} if ema else None,
            **checkpoint.meta_record({"model": {"name": "m"}}, {"names": ["a"]}, {"a": [2, 1]}, data)}


def test_save_replaces_the_file_atomically_and_load_gives_back_the_values(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "c.pt"
    checkpoint.save(path, a_checkpoint(tmp_path))
    loaded = checkpoint.load(path)
    assert list(loaded) == ["model", "ema", "config", "targets", "train_class_counts", "data"]
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["ema"] is None
    assert loaded["data"] == {"folds": "f" * 64, "cache": "c" * 64, "dir": str((tmp_path / "data").resolve())}
    assert checkpoint.data_dir(loaded) == (tmp_path / "data").resolve() and checkpoint.data_dir({}) is None

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=f"{path}: could not be written: No space left on device; the previous"):
        checkpoint.save(path, {"other": 1})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]   # no temporary file left
    assert checkpoint.load(path).keys() == loaded.keys()             # the previous file, whole


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable checkpoint (an empty file"),
    (b"PK\x03\x04 garbage", "not a readable checkpoint (truncated, corrupted or not a torch file"),
    ([1, 2], "not an okkhor checkpoint (it holds a list, not a dict)"),
])
def test_a_foreign_or_broken_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(OkkhorError) as info:
        checkpoint.load(path)
    assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


def test_inference_weights_are_the_ema_when_kept(tmp_path):
    plain, with_ema = a_checkpoint(tmp_path), a_checkpoint(tmp_path, ema=True)
    assert torch.equal(checkpoint.inference_weights(plain, "p")["w"], torch.arange(3.0))
    assert torch.equal(checkpoint.inference_weights(with_ema, "p")["w"], torch.full((3,), 7.0))
    assert not checkpoint.has_ema(plain) and checkpoint.has_ema(with_ema)
    assert checkpoint.model_name(plain) == "m"
    with pytest.raises(OkkhorError, match="^here: not an okkhor checkpoint \\(its weights are not a dict of tensors"):
        checkpoint.inference_weights({**plain, "model": {"w": [1.0]}}, "here")
    with pytest.raises(OkkhorError, match="^--init x.pt: not an okkhor checkpoint \\(no 'model'\\)"):
        checkpoint.require({"config": {}, "targets": {}}, checkpoint.INFERENCE_KEYS, "--init x.pt")


@pytest.mark.parametrize("reason, done, epochs, finished", [
    ("completed", 2, 2, True), ("completed", 2, 4, False),   # train.epochs raised: the run goes on
    ("early_stopping", 1, 5, True), ("stop_after", 1, 2, False), ("running", 2, 2, True)])
def test_is_finished(reason, done, epochs, finished):
    ckpt = {"run": {"stop_reason": reason, "best_epoch": 1}, "trainer": {"epoch": done}}
    assert checkpoint.is_finished(ckpt, epochs) is finished
    assert checkpoint.best_epoch(ckpt) == 1 and checkpoint.best_epoch({}) is None


# ------------------------------------------------------------------------------------ what the libraries must keep

def test_adapter_ignite_checkpoint_items_round_trip_through_the_documented_state_dict(tmp_path):
    """The top-N list of an ignite Checkpoint, read and restored through state_dict()/load_state_dict(), is what
    the library then acts on (fails if ignite's state_dict stops being that one list)."""
    from ignite.handlers import Checkpoint, DiskSaver

    from okkhor.training.adapters import checkpoint_items, set_checkpoint_items

    scores = {1: 0.3, 2: 0.9, 3: 0.5, 4: 0.4}

    def top(folder):
        return Checkpoint({"m": torch.nn.Linear(1, 1)}, DiskSaver(str(folder), require_empty=False), n_saved=2,
                          filename_pattern="e{global_step}.{ext}", score_function=lambda e: scores[e.state.epoch],
                          global_step_transform=lambda e, event: e.state.epoch)

    first, trainer = top(tmp_path), Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, first)
    trainer.run([0], max_epochs=3)
    items = checkpoint_items(first)
    assert items == [(0.5, "e3.pt"), (0.9, "e2.pt")] and sorted(p.name for p in tmp_path.iterdir()) == ["e2.pt",
                                                                                                      "e3.pt"]
    again = top(tmp_path)   # a resumed run: epoch 4's 0.4 beats neither kept score, epoch 3's file stays
    set_checkpoint_items(again, items)
    assert checkpoint_items(again) == items
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, again)
    trainer.load_state_dict({"epoch": 3, "max_epochs": 4, "epoch_length": 1})
    trainer.run([0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2.pt", "e3.pt"]


class _WorkerPid(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import os

        return os.getpid()


def test_adapter_torch_end_workers_ends_persistent_workers_now():
    """The persistent workers of a loader still referenced end at once (fails if torch moves them out of
    DataLoader._iterator, which then no longer holds them)."""
    import os
    import time

    from torch.utils.data import DataLoader

    from okkhor.training.adapters import end_workers

    loader = DataLoader(_WorkerPid(), batch_size=1, num_workers=1, persistent_workers=True)
    (pid,) = {int(x) for x in loader}
    assert pid != os.getpid() and loader._iterator is not None

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert alive()
    end_workers(loader)
    deadline = time.time() + 10
    while alive() and time.time() < deadline:
        time.sleep(0.05)
    assert not alive()
