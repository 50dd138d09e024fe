"""Optimizers and lr schedules from timm and torch: today's curves kept, every schedule runs, bad names are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from okkhor.cli import app
from okkhor.config import TrainConfig, load_config
from okkhor.errors import OkkhorError
from okkhor.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler, steps_per_epoch

CURVES = json.loads((Path(__file__).parent / "fixtures" / "lr_curves.json").read_text())["cases"]
ROOT = Path(__file__).resolve().parents[1]


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def run_curve(tcfg: TrainConfig, iterations: int, accum: int, scores=None) -> dict[str, list[float]]:
    """lr and beta1 (or SGD momentum) at each optimizer step, stepped as TrainStep and the epoch handler step."""
    optimizer = build_optimizer(small_model(), tcfg)
    schedule = build_scheduler(optimizer, tcfg, iterations, accum)
    per_epoch = steps_per_epoch(iterations, accum)
    lrs, betas = [], []
    for n in range(1, tcfg.epochs * per_epoch + 1):
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        betas.append(group["betas"][0] if "betas" in group else group.get("momentum"))
        optimizer.step()
        schedule.step_update(n)
        if n % per_epoch == 0:
            schedule.step_epoch(None if scores is None else scores[n // per_epoch - 1])
    return {"lr": lrs, "beta1": betas}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_lr_per_step_equals_the_curve_of_the_code_before_the_library_schedules(name):
    """tests/fixtures/lr_curves.json was written by the hand-written schedules (LambdaLR + WarmupCosine/Constant,
    torch OneCycleLR) before they were replaced; the presets and the default schedules give the same steps."""
    case = CURVES[name]
    cfg = load_config(ROOT / case["config"] if case["config"] else None, case["overrides"])
    got = run_curve(cfg.train, case["iterations"], case["accum"])
    assert len(got["lr"]) == len(case["lr"]) > 10
    assert got["lr"] == pytest.approx(case["lr"], rel=1e-12, abs=1e-18)
    assert got["beta1"] == pytest.approx(case["beta1"], rel=1e-12)


def test_step_poly_and_plateau_schedules():
    base = dict(lr=1.0, epochs=6, warmup_epochs=0.0, decay_rate=0.5, decay_epochs=2)
    step = run_curve(TrainConfig(schedule="step", **base), iterations=2, accum=1)["lr"]
    assert step == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    poly = run_curve(TrainConfig(schedule="poly", poly_power=1.0, **base), iterations=2, accum=1)["lr"]
    assert poly == pytest.approx([1 - s / 12 for s in range(12)])
    # plateau: the valid score gains for 2 epochs, then stalls; patience 2 epochs -> halved after the 5th epoch
    plateau = run_curve(TrainConfig(schedule="plateau", **base), iterations=2, accum=1,
                        scores=[0.1, 0.2, 0.2, 0.2, 0.2, 0.2])["lr"]
    assert plateau == pytest.approx([1.0] * 10 + [0.5] * 2)
    warm = run_curve(TrainConfig(schedule="step", **{**base, "warmup_epochs": 1.0}), iterations=3, accum=1)["lr"]
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_schedule_state_round_trips_mid_run():
    """A schedule rebuilt and loaded from state_dict continues with the same lr as the one that ran on."""
    for name in SCHEDULES:
        tcfg = TrainConfig(schedule=name, lr=0.1, epochs=4, decay_epochs=1, warmup_epochs=0.5)
        a_opt = build_optimizer(small_model(), tcfg)
        a = build_scheduler(a_opt, tcfg, 4, 1)
        for n in range(1, 7):
            a_opt.step()
            a.step_update(n)
        a.step_epoch(0.3)
        b_opt = build_optimizer(small_model(), tcfg)
        b = build_scheduler(b_opt, tcfg, 4, 1)
        b_opt.load_state_dict(a_opt.state_dict())
        b.load_state_dict(a.state_dict())
        for n in range(7, 12):
            for opt, sched in ((a_opt, a), (b_opt, b)):
                opt.step()
                sched.step_update(n)
            assert b_opt.param_groups[0]["lr"] == a_opt.param_groups[0]["lr"], (name, n)


def test_any_timm_optimizer_name():
    assert {"adamw", "adam", "sgd", "lamb", "lion"} <= set(OPTIMIZERS)
    optimizer = build_optimizer(small_model(), TrainConfig(optimizer="lamb", lr=0.01, weight_decay=0.1))
    assert type(optimizer).__name__ == "Lamb"
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.1]  # biases and norm scales take no weight decay


@pytest.mark.parametrize("key, bad, some_valid", [("train.optimizer", "adamx", ["adamw", "sgd", "lamb"]),
                                                  ("train.schedule", "cosin", ["onecycle", "cosine", "plateau"])])
def test_bad_optimizer_or_schedule_name_is_one_line_listing_the_valid_ones(tmp_path, key, bad, some_valid):
    with pytest.raises(OkkhorError) as e:
        load_config(None, [f"{key}={bad}"])
    assert "\n" not in str(e.value) and key in str(e.value) and repr(bad) in str(e.value)
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                      "--set", f"{key}={bad}"])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("okkhor: error: ")
    assert all(name in lines[0] for name in some_valid), lines[0]
