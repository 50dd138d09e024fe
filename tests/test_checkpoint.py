"""Checkpoints through ignite: every stateful object round-trips, files are plain (weights_only) and atomic."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.handlers import EarlyStopping
from timm.utils import ModelEmaV3

from okkhor.config import MixConfig, TrainConfig
from okkhor.errors import OkkhorError
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
