"""Host reads of okkhor's training step: how many times a plain micro-batch (inside an accumulation group) and an
optimizer step read a tensor to the host (Tensor.item / __float__ / __int__ / __bool__ / tolist, counted by
patching them), and on CUDA whether the plain micro-batch runs under torch.cuda.set_sync_debug_mode("error").

Usage: python bench/sync_check.py [--device cpu|cuda] [--model NAME --size S --batch B]   (prints one JSON line)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from types import SimpleNamespace
from typing import Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
READS = ("item", "__float__", "__int__", "__bool__", "tolist")


@contextlib.contextmanager
def counting_host_reads() -> Iterator[dict]:
    """Count calls of the Tensor methods that copy a value to the host while the block runs: yields {"n": count}."""
    import torch

    counts = {"n": 0}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(real):
        def read(self, *args, **kwargs):
            counts["n"] += 1
            return real(self, *args, **kwargs)
        return read

    try:
        for name, real in saved.items():
            setattr(torch.Tensor, name, counted(real))
        yield counts
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def tiny_step(device: str = "cpu", model: str = "", size: int = 8, batch: int = 8, accum: int = 2):
    """A TrainStep (accum micro-batches per optimizer step) with a fake engine and a batch maker."""
    import torch
    import torch.nn as nn

    from okkhor.config import TrainConfig
    from okkhor.training.optim import build_optimizer
    from okkhor.training.step import BatchPlan, Precision, TrainStep

    classes = (3, 2)
    if model:
        from okkhor.config import ModelConfig
        from okkhor.models.model import build_model
        from okkhor.targets import Targets

        net = build_model(ModelConfig(name=model), Targets.make(("a", "b"), classes))
    else:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3, padding=1)
                self.heads = nn.ModuleList([nn.Linear(4, c) for c in classes])

            def forward(self, x):
                features = torch.relu(self.conv(x)).mean(dim=(2, 3))
                return tuple(head(features) for head in self.heads)

        net = Net()
    net.to(device)
    step = TrainStep(net, build_optimizer(net, TrainConfig()), BatchPlan(batch, accum), [1.0, 1.0],
                     precision=Precision(device, "auto", "auto"))
    engine = SimpleNamespace(state=SimpleNamespace(epoch=1, iteration=0, epoch_length=1000))
    g = torch.Generator().manual_seed(0)

    def batch_() -> tuple:
        return (torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8),
                torch.stack([torch.randint(0, c, (batch,), generator=g) for c in classes], 1))

    return step, engine, batch_


def measure(device: str = "cpu", model: str = "", size: int = 8, batch: int = 8, iterations: int = 4) -> dict:
    """Host reads per iteration of an accum=2 run: {"plain_micro_batch": [...], "optimizer_step": [...]}, after
    one warmup group; on CUDA also "sync_debug_error_ok" for the plain micro-batches."""
    import torch

    step, engine, make = tiny_step(device, model, size, batch)
    out: dict = {"device": device, "amp": step.precision.amp, "plain_micro_batch": [], "optimizer_step": []}
    for i in range(2 + iterations):
        engine.state.iteration = i + 1
        data = make()
        plain = (i + 1) % 2 == 1
        debug = contextlib.nullcontext()
        if device.startswith("cuda") and plain and i >= 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            debug = contextlib.ExitStack()
            debug.callback(torch.cuda.set_sync_debug_mode, "default")
        with counting_host_reads() as counts, debug:
            step(engine, data)
        if i >= 2:
            out["plain_micro_batch" if plain else "optimizer_step"].append(counts["n"])
    if device.startswith("cuda"):
        out["sync_debug_error_ok"] = True  # a sync in a plain micro-batch would have raised above
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="", help="a timm model name (default: a tiny conv net)")
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    result = measure(args.device, args.model, args.size, args.batch)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
