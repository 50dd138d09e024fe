"""`okkhor memory` and batch_size=auto: the fitted prediction, the JSON, budgets, the micro-batch choice."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from okkhor.cli import app
from okkhor.config import Config, apply_overrides
from okkhor.errors import OkkhorError
from okkhor.training import memory

runner = CliRunner()
MB = 1 << 20


class FakeServer:
    """Stands in for the measuring process: forward/backward 100 MB + 1 MB per sample, optimizer step 120 MB."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def measure(self, cfg, targets, batch):
        self.seen.append(batch)
        backward = 100 * MB + batch * MB
        return {"backward": backward, "optimizer": 120 * MB, "peak": max(backward, 120 * MB)}

    def close(self) -> None:
        pass


@pytest.fixture
def fake_server(monkeypatch):
    server = FakeServer()
    monkeypatch.setattr("okkhor.training.memory.server.ForkServer", lambda: server)
    return server


def test_prediction_at_an_unmeasured_batch_is_within_15_percent():
    """Real measurements on CPU: fit on batches 2, 4 and 8, predict 16."""
    fit = memory.probe("resnet18", 32, "fp32", "cpu", batches=(2, 4, 8, 16))
    assert fit.batches == [2, 4, 8, 16]
    measured = [(b, {"backward": bw, "optimizer": fit.optimizer_bytes, "peak": p})
                for b, bw, p in zip(fit.batches, fit.backward_peaks, fit.peaks, strict=False)]
    partial = memory.MemoryFit.fitted("resnet18", 32, "fp32", "cpu", fit.method, measured[:3])
    peak16 = fit.peaks[3]
    error = abs(partial.predict(16) - peak16) / peak16
    assert error < 0.15, (partial.to_dict(), peak16)
    assert fit.fixed_bytes > 40 * MB  # at least the fp32 weights of resnet18 (11M parameters)


def test_json_has_the_fit_and_the_plan(fake_server):
    r = runner.invoke(app, ["memory", "--model", "resnet18", "--image-size", "32", "--device", "cpu",
                            "--budget", "200MiB", "--effective-batch", "256", "--json", "--batches", "2,4,8"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("per_sample_bytes", "fixed_bytes", "micro_batch", "accum", "batches", "measured_bytes",
                "predicted_bytes", "optimizer_step_bytes", "budget_bytes", "max_batch"):
        assert key in out, key
    assert fake_server.seen == [2, 4, 8]
    assert out["per_sample_bytes"] == MB and out["fixed_bytes"] == 100 * MB
    # 90% of 200 MiB = 180 MiB: (180 - 100) / 1 = 80 fits; 64 divides 256
    assert (out["max_batch"], out["micro_batch"], out["accum"]) == (80, 64, 4)


def test_table_output(fake_server):
    r = runner.invoke(app, ["memory", "--model", "resnet18", "--image-size", "32", "--device", "cpu",
                            "--budget", "1GiB", "--batches", "2,4"])
    assert r.exit_code == 0, r.output
    assert "largest micro-batch that fits" in r.stdout and "per sample" in r.stdout


@pytest.mark.parametrize("text, expected", [
    ("6GB", 6 * 10 ** 9), ("6GiB", 6 << 30), ("6G", 6 << 30), ("512MB", 512 * 10 ** 6), ("512mib", 512 << 20),
    ("1.5g", int(1.5 * (1 << 30))), ("100", 100), (" 2 TB ", 2 * 10 ** 12), (4096, 4096)])
def test_parse_bytes(text, expected):
    assert memory.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["6XB", "GB", "-1GB", "0MB", "1e9", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(OkkhorError):
        memory.parse_bytes(text)


def test_bad_budget_is_one_line_error():
    r = runner.invoke(app, ["memory", "--model", "resnet18", "--image-size", "32", "--device", "cpu",
                            "--budget", "lots"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "lots" in r.output


def test_fp16_on_cpu_is_one_line_error():
    r = runner.invoke(app, ["memory", "--model", "resnet18", "--image-size", "32", "--precision", "fp16",
                            "--device", "cpu"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "fp16" in lines[0] and "CUDA" in lines[0], r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("largest, effective, expected", [
    (80, 256, (64, 4)),      # a divisor of 256 within half of what fits
    (300, 256, (256, 1)),    # everything fits
    (100, 250, (84, 3)),     # no divisor in 51..100: fewest steps, smallest micro-batch for them
    (7, 13, (7, 2)),
    (1, 5, (1, 5)),
    (100, 0, (96, 1)),       # no effective batch: a multiple of 8
    (5, 0, (5, 1)),
])
def test_plan_batch(largest, effective, expected):
    micro, accum = memory.plan_batch(largest, effective)
    assert (micro, accum) == expected
    assert micro <= largest and micro * accum >= effective


def test_choose_batch_reaches_the_effective_batch(fake_server):
    from okkhor.models.model import build_model
    from okkhor.targets import Targets

    cfg = apply_overrides(Config(), ["train.batch_size=auto", "train.effective_batch=300", "data.image_size=32"])
    model = build_model(cfg.model, Targets.from_class_map())
    lines: list[str] = []
    micro, accum = memory.choose_batch(model, cfg, "cpu", budget=200 * MB, log=lines.append)
    assert micro <= 80 and micro * accum >= 300
    assert (micro, accum) == (75, 4)
    assert len(lines) == 1 and "micro-batch 75 x accum 4" in lines[0]
    with pytest.raises(OkkhorError, match="budget"):
        memory.choose_batch(model, cfg, "cpu", budget=100 * MB)


def test_fit_model():
    fit = memory.MemoryFit.fitted("m", 32, "fp32", "cpu", "test", [
        (b, {"backward": 10 * MB + b * MB, "optimizer": 20 * MB, "peak": max(10 * MB + b * MB, 20 * MB)})
        for b in (2, 4, 8)])
    assert fit.fixed_bytes == pytest.approx(10 * MB) and fit.per_sample_bytes == pytest.approx(MB)
    assert fit.predict(4) == 20 * MB and fit.predict(30) == pytest.approx(40 * MB)
    assert fit.max_batch(50 * MB, headroom=1.0) == 40
    assert fit.max_batch(15 * MB, headroom=1.0) == 0   # the optimizer step alone does not fit
    with pytest.raises(OkkhorError):
        memory.fit_line([4, 4], [1, 2])


class CountingMeter:
    def __init__(self) -> None:
        self.reads = 0

    def reset(self) -> None:
        pass

    def read(self) -> int:
        self.reads += 1
        return self.reads * MB


def test_in_process_probe_restores_the_model_and_stops_at_out_of_memory(monkeypatch):
    """The CUDA path's bookkeeping, run on the CPU: the trainer's own TrainStep, then weights and RNG put back."""
    import torch

    from okkhor.training.step import TrainStep

    steps: list[int] = []
    real_step = TrainStep.optimizer_step
    monkeypatch.setattr(TrainStep, "optimizer_step", lambda self: steps.append(1) or real_step(self))

    from okkhor.models.model import build_model
    from okkhor.targets import Targets
    from okkhor.training.memory.cuda import measure_here
    from okkhor.training.memory.steps import train_steps

    cfg = memory.probe_settings("resnet18", 32)
    targets = Targets.from_class_map()
    model = build_model(cfg.model, targets).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen: list[int] = []

    def measure(model, cfg, targets, device, batch):
        seen.append(batch)
        if batch == 8:
            return None  # ran out of memory
        return train_steps(model, cfg, targets, device, batch, CountingMeter())

    measured, failed = measure_here(model, cfg, targets, torch.device("cpu"), [2, 4, 8, 16], None, measure)
    assert seen == [2, 4, 8] and failed == 8 and [b for b, _ in measured] == [2, 4]
    assert len(steps) == 4  # two optimizer steps of the real TrainStep per measured batch size
    assert measured[0][1] == {"backward": 3 * MB, "optimizer": 4 * MB, "peak": 4 * MB}  # second step's phases
    assert not model.training and all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)


def describe(step) -> dict:
    """What makes a training step, as plain values: optimizer, schedule, EMA, loss, mixer, clipping, precision."""
    ema, mixer = step.ema, step.loss.mixer
    return {"optimizer": (type(step.optimizer).__name__, dict(step.optimizer.defaults)),
            "schedule": None if step.scheduler is None else type(step.scheduler.scheduler).__name__,
            "ema": None if ema is None else (type(ema).__name__, ema.decay, ema.use_warmup),
            "loss": (step.loss.weights, step.loss.label_smoothing, step.loss.ohem),
            "mixer": None if mixer is None else (mixer.cfg, mixer.generator.initial_seed()),
            "clip_grad": step.clip_grad, "precision": (step.precision.amp, step.precision.channels_last)}


class Built(Exception):
    """Raised once the trainer has built its step: the test needs nothing more of the run."""


@pytest.fixture(scope="module")
def tiny(prepared_tiny_kaggle):
    return prepared_tiny_kaggle()


@pytest.mark.parametrize("sets", [
    [],
    ["train.ema=0.9", "mix.kind=cutmix", "train.label_smoothing=0.1", "train.ohem=0.75", "train.clip_grad=1.0",
     "train.optimizer=sgd"],
])
def test_the_memory_probe_measures_the_step_the_trainer_builds(tiny, monkeypatch, tmp_path, sets):
    """train.batch_size=auto: the probe's measured step (here on the trainer's own model, as on CUDA) is the one the
    run then trains with: the same EMA (with its warm-up), mixer (one for every mix.kind, seeded alike), schedule,
    loss, optimizer, clipping and precision."""
    from okkhor.config import load_config
    from okkhor.io.labels import load_targets
    from okkhor.training.memory.steps import train_steps
    from okkhor.training.step import TrainStep
    from okkhor.training.train import train

    data = tiny
    steps: list = []
    real = TrainStep.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        steps.append(self)
        if len(steps) == 2:   # the probe's, then the trainer's
            raise Built

    def choose_batch(model, cfg, device):
        train_steps(model, cfg, load_targets(data.root), device, 2, CountingMeter())
        return 16, 1

    monkeypatch.setattr(TrainStep, "__init__", spy)
    monkeypatch.setattr(memory, "choose_batch", choose_batch)
    cfg = load_config(None, ["model.name=test_efficientnet", "data.image_size=32", "data.folds=4", "data.workers=0",
                             "train.batch_size=auto", "train.effective_batch=16", "train.device=cpu", *sets])
    with pytest.raises(Built):
        train(data.root, tmp_path / "run", cfg, show_progress=False, log=lambda m: None)
    probe, trainer = (describe(step) for step in steps)
    assert probe == trainer
    assert (trainer["ema"] is not None) == bool(sets) and trainer["mixer"][0].kind == ("cutmix" if sets else "none")
