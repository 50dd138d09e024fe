"""Issue 14's fast paths, on the CPU: no host read in a plain micro-batch, the device finiteness flag, `train.amp:
auto` and `okkhor info`, the compile/manifold refusal, device-side masks and counts, and bench/gpu.sh --dry-run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from typer.testing import CliRunner

import okkhor.utils.devices
from helpers import assert_one_line_error
from okkhor.cli import app
from okkhor.config import load_config
from okkhor.errors import OkkhorError
from okkhor.training.step import NonFiniteLoss, Precision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import sync_check  # noqa: E402  (bench/sync_check.py: the host-read counter the bench and this test share)


def test_a_plain_micro_batch_makes_no_host_read():
    """accum=2: the first micro-batch of each group reads nothing to the host (the old step read the loss twice:
    the finiteness check and the logged value); the optimizer step's reads are AdamW's own CPU step counters."""
    result = sync_check.measure("cpu")
    assert result["plain_micro_batch"] == [0, 0], result
    n_params = 6  # the tiny net's conv and two heads, weight and bias each: one step-counter read per parameter
    assert all(n <= n_params for n in result["optimizer_step"]), result
    with sync_check.counting_host_reads() as counts:  # the counter does count a read
        float(torch.ones(()))
    assert counts["n"] == 1


def test_a_nan_loss_is_found_on_the_device_at_the_next_check():
    step, _, make = sync_check.tiny_step("cpu", accum=1)
    step.sync_every = 3
    real = step.loss.__call__
    calls = []

    def poisoned(model, x, y, epoch):
        calls.append(1)
        loss = real(model, x, y, epoch)
        return loss * float("nan") if len(calls) == 2 else loss

    step.loss = poisoned
    engine = Engine(step)
    step.attach(engine)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 1, iteration 2 of the epoch"):
        engine.run([make() for _ in range(5)], max_epochs=1)
    assert len(calls) == 3  # read at the optimizer step after sync_every=3 iterations, not at once


@pytest.mark.parametrize("flags, amp", [({"avx2", "fma"}, "off"), ({"avx2", "avx512_bf16"}, "bf16"),
                                        ({"amx_bf16", "avx512_bf16"}, "bf16")])
def test_amp_auto_follows_the_cpu_flags_and_info_says_so(monkeypatch, flags, amp):
    monkeypatch.setattr(okkhor.utils.devices, "cpu_flags", lambda: set(flags))
    precision = Precision("cpu", "auto", "auto")
    assert precision.amp == amp and precision.channels_last is False  # channels_last auto: on for CUDA only
    assert ("CPU flags: " if amp == "bf16" else "CPU without amx_bf16 or avx512_bf16") in precision.amp_reason
    assert Precision("cpu", "off").amp == "off" and Precision.for_inference("cpu").amp == "off"
    result = CliRunner().invoke(app, ["info", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    want = "bf16" if amp == "bf16" else "fp32"
    assert f"train.amp auto: {want}" in result.output and "device: cpu" in result.output
    assert ("bf16: fast" if amp == "bf16" else "bf16: slow") in result.output
    info = json.loads(CliRunner().invoke(app, ["info", "--device", "cpu", "--json"]).output)
    assert info["auto_precision"] == want and info["bf16_fast"] == (amp == "bf16")


def test_defaults_and_the_compile_manifold_refusal(tmp_path):
    cfg = load_config()
    assert cfg.train.amp == "auto" and cfg.train.channels_last == "auto" and cfg.data.persistent_workers
    assert load_config(None, ["train.channels_last=true"]).train.channels_last is True
    with pytest.raises(OkkhorError, match="train.compile=true cannot be used with mix.kind=manifold"):
        load_config(None, ["train.compile=true", "mix.kind=manifold"])
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                      "--set", "train.compile=true", "--set", "mix.kind=manifold"])
    assert_one_line_error(result.exit_code, result.output, "mix.kind=manifold", "train.compile=false")
    with pytest.raises(OkkhorError, match="data.prefetch_factor"):
        load_config(None, ["data.prefetch_factor=0"])


def test_cutmix_and_fmix_masks_are_built_on_the_batch_device_with_host_known_areas():
    from okkhor.training.mixing import _cutmix_boxes, _fmix_masks

    area = np.array([0.25, 0.5, 0.0, 1.0])
    for masks in (_cutmix_boxes, _fmix_masks):
        mask, pasted = masks(np.random.default_rng(0), area, 16, 12, torch.device("cpu"))
        assert mask.shape == (4, 1, 16, 12) and mask.dtype == torch.bool
        np.testing.assert_allclose(mask.float().mean(dim=(1, 2, 3)).numpy(), pasted, atol=1e-7)
        assert pasted[2] == 0.0 and (masks is _cutmix_boxes or pasted[3] == 1.0)  # a full box may be clipped


def test_recall_counts_by_scatter_match_the_reference_function():
    from okkhor.metrics import HierarchicalRecall, hierarchical_recall
    from okkhor.targets import Targets

    targets = Targets.make(("a", "b"), (5, 3))
    g = torch.Generator().manual_seed(0)
    metric = HierarchicalRecall(targets)
    ys, ps = [], []
    for _ in range(3):
        y = torch.stack([torch.randint(0, 5, (20,), generator=g), torch.randint(0, 3, (20,), generator=g)], 1)
        logits = (torch.randn(20, 5, generator=g), torch.randn(20, 3, generator=g))
        metric.update((logits, y))
        ys.append(y.numpy())
        ps.append(np.stack([lg.argmax(1).numpy() for lg in logits], 1))
    score, recalls = hierarchical_recall(np.concatenate(ys), np.concatenate(ps), targets)
    result = metric.compute()
    assert result["score"] == pytest.approx(score, abs=1e-12)
    assert result["recall_a"] == pytest.approx(recalls["a"], abs=1e-12)


def test_gpu_bench_dry_run_on_the_cpu(tmp_path):
    """bench/gpu.sh --dry-run: every step of the GPU benchmark at tiny sizes on the CPU, one JSON result."""
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "gpu-results.json").read_text())
    assert result["dry_run"] and result["info"]["device"] == "cpu"
    entry = result["models"]["resnet10t"]
    assert entry["trainer_overhead"]["value"] > 0, entry
    assert entry["trainer_overhead"]["okkhor_images_per_s"] > 0
    assert entry["predict_images_per_s"]["value"] > 0, entry
    assert entry["memory"]["max_batch"] >= 1, entry
    assert result["sync_check"]["plain_micro_batch"] == [0, 0]
    assert "wrote" in proc.stdout
