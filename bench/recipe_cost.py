"""Training-step cost of recipe choices on this machine: activations (vs relu) and mixing kinds (vs none).

Run from the repository root:  python -m bench.recipe_cost [--quick] [--out FILE.json]
Prints one JSON object. Configurations are timed round-robin (one step each per round, after warmup rounds), so
load from other processes falls on all of them alike; each figure is a median over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import torch

from okkhor.config import MixConfig, ModelConfig
from okkhor.models.model import build_model
from okkhor.targets import Targets
from okkhor.training.mixing import Mixer, backbone_stages, multihead_loss

BENGALI = Targets.make(["grapheme_root", "vowel_diacritic", "consonant_diacritic"], [168, 11, 7])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model_name: str, act: str = "default", mix: str = "none", size: int = 64, batch: int = 64,
              device: str = "cpu", seed: int = 0) -> Callable[[], float]:
    """A closure running one full training step (mix, forward, loss, backward, AdamW) and returning its seconds."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=model_name, act=act), BENGALI).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mixer = Mixer(MixConfig(kind=mix), seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size, size, generator=g).to(dev)
    y = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in BENGALI.num_classes], 1).to(dev)

    def step() -> float:
        _sync(dev)
        start = time.perf_counter()
        logits, mt = mixer(model, x, y, epoch=0)
        loss = multihead_loss(logits, mt, BENGALI.weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        return time.perf_counter() - start

    return step


def _round_robin(steps: dict[str, Callable[[], float]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each configuration."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + repeats):
        for key, step in steps.items():
            t = step()
            if r >= warmup:
                times[key].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def _compare(models: Sequence[str], option: str, choices: Sequence[str], base: str, **common) -> dict:
    """Per model: median step seconds for each value of one make_step option, and each one's ratio to `base`."""
    warmup, repeats = common.pop("warmup"), common.pop("repeats")
    out: dict[str, dict] = {}
    for name in models:
        steps = {c: make_step(name, **{option: c}, **common) for c in choices}
        seconds = _round_robin(steps, warmup, repeats)
        entry: dict = {"step_s": {c: round(s, 5) for c, s in seconds.items()}}
        if base in seconds:
            entry.update({f"{c}/{base}": round(s / seconds[base], 3) for c, s in seconds.items() if c != base})
        out[name] = entry
    return out


def activation_cost(models: Sequence[str] = ("efficientnet_b0", "resnet18"),
                    acts: Sequence[str] = ("relu", "silu", "mish"), size: int = 64, batch: int = 64, warmup: int = 2,
                    repeats: int = 5, device: str = "cpu") -> dict:
    """Per model: median step seconds per activation and the ratio of each to relu (`mish/relu`, `silu/relu`)."""
    return _compare(models, "act", acts, "relu", size=size, batch=batch, warmup=warmup, repeats=repeats,
                    device=device)


def mixing_overhead_ms(model_name: str, kind: str, size: int = 64, batch: int = 64, layer: int = 2,
                       reps: int = 50, device: str = "cpu") -> float:
    """Median milliseconds of the mixing work alone (draws, mixing the tensor, the mixed targets), outside a step.

    For manifold the mixed tensor is the backbone's output at stage `layer`, as in training.
    """
    dev = torch.device(device)
    x = torch.rand(batch, 1, size, size, device=dev)
    y = torch.zeros(batch, len(BENGALI), dtype=torch.long, device=dev)
    if kind == "manifold":
        model = build_model(ModelConfig(name=model_name), BENGALI).to(dev).eval()
        seen = {}
        hook = backbone_stages(model)[layer][1].register_forward_hook(lambda m, i, o: seen.setdefault("t", o))
        with torch.no_grad():
            model(x)
        hook.remove()
        x = seen["t"].detach().requires_grad_()
    mixer = Mixer(MixConfig(kind=kind, layer=layer), seed=0)
    times = []
    for _ in range(reps):
        _sync(dev)
        start = time.perf_counter()
        plan = mixer.plan(x.shape)
        if plan is not None:
            plan.apply(x)
            plan.targets(y)
        _sync(dev)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def mixing_cost(models: Sequence[str] = ("resnet18",),
                kinds: Sequence[str] = ("none", "mixup", "cutmix", "dirichlet", "manifold"), size: int = 64,
                batch: int = 64, warmup: int = 2, repeats: int = 5, device: str = "cpu") -> dict:
    """Per model: median step seconds per mix kind and the ratio of each to none (`mixup/none`, ...).

    Whole-step ratios carry the machine's noise (a few per cent when other jobs run); `mix_ms`, the mixing work
    timed alone, and `overhead/none` = 1 + mix_ms / step(none) say the same with far less noise.
    """
    out = _compare(models, "mix", kinds, "none", size=size, batch=batch, warmup=warmup, repeats=repeats,
                   device=device)
    for name, entry in out.items():
        mix_ms = {k: round(mixing_overhead_ms(name, k, size, batch, device=device), 3) for k in kinds if k != "none"}
        entry["mix_ms"] = mix_ms
        if "none" in entry["step_s"]:
            base_ms = entry["step_s"]["none"] * 1e3
            entry.update({f"{k}_overhead/none": round(1 + ms / base_ms, 4) for k, ms in mix_ms.items()})
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one warmup round, three timed rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default; 1 is steadier when other jobs share the cores)")
    parser.add_argument("--out", default="", help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup, repeats = (1, 3) if args.quick else (args.warmup, args.repeats)
    common = {"size": args.size, "batch": args.batch, "warmup": warmup, "repeats": repeats, "device": args.device}
    started = time.perf_counter()
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": args.device, "loadavg_1m_before": round(os.getloadavg()[0], 2)},
        "settings": common,
        "activation": activation_cost(**common),
        "mixing": mixing_cost(**common),
    }
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
