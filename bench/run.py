"""okkhor's benchmarks in one run: every figure a ratio or a rate measured here and now (`make bench`).

Usage:
  python bench/run.py                       all sections; writes bench/results.json and bench/RESULTS.md
  python bench/run.py --quick --json        trainer_overhead, data_stall, mixing_cost, precision, reduced (< 3 min on 2
                                            cores); prints one JSON object and writes nothing
  python bench/run.py --only data_stall     one section (repeatable); writes the files unless --no-write
  python bench/run.py --only trainer_overhead --device cuda --model efficientnet_b0 --size 128 --batch 256 \
      --amp bf16 --channels-last --json --no-write          (what bench/gpu.sh runs on a GPU)

A section whose piece of okkhor is missing, or that fails, records a null value with the reason instead of
stopping the run. Timings that are compared are interleaved (paired rounds, alternating order) and summarised by
medians, so load from other processes falls on both sides alike.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # the sibling benchmark scripts (prepare_bench, recipe_cost, synth_speed)

QUICK_SECTIONS = ("trainer_overhead", "data_stall", "mixing_cost", "precision")


# ------------------------------------------------------------------------------------------------ helpers

def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _command(args: argparse.Namespace, section: str, *extra: str) -> str:
    """The command line that reproduces one section with this run's settings."""
    parts = ["python", "bench/run.py", "--only", section]
    if args.quick:
        parts.append("--quick")
    for flag in ("device", "model", "size", "batch", "amp"):
        value = getattr(args, flag)
        if value != DEFAULTS[flag]:
            parts += [f"--{flag}", str(value)]
    if args.channels_last:
        parts.append("--channels-last")
    if args.compile:
        parts.append("--compile")
    if args.threads:
        parts += ["--threads", str(args.threads)]
    for flag in ("iters", "rounds"):
        if getattr(args, flag) != DEFAULTS[flag] and not args.quick:
            parts += [f"--{flag}", str(getattr(args, flag))]
    return " ".join(shlex.quote(p) for p in [*parts, *extra])


def _bench_config(args: argparse.Namespace):
    """The okkhor Config of the timed training: defaults with the bench's model, size, batch and precision."""
    from okkhor.config import Config, validate

    cfg = Config()
    cfg.model.name, cfg.data.image_size = args.model, args.size
    cfg.train.batch_size, cfg.train.amp, cfg.train.channels_last = args.batch, args.amp, args.channels_last
    cfg.train.epochs = 1000  # the lr schedule is laid out far beyond the bench's steps
    validate(cfg)
    return cfg


def _random_batches(count: int, batch: int, size: int, targets, seed: int = 0) -> list:
    """uint8 image batches [B, 1, S, S] with labels, as the trainer's loader sends them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8),
             torch.stack([torch.randint(0, n, (batch,), generator=g) for n in targets.num_classes], 1))
            for _ in range(count)]


def _okkhor_engine(model, cfg, targets, device):
    """An ignite Engine around the training step the trainer builds (okkhor.training.setup.build_training:
    build_optimizer, the lr schedule, the loss with the mixer, the GradScaler, OomRecovery as the micro-batch
    runner) with the step's epoch handlers (okkhor.training.step.create_trainer)."""
    from okkhor.training.setup import build_training
    from okkhor.training.step import BatchPlan, Precision, create_trainer

    parts = build_training(model, cfg, targets, Precision(device, cfg.train.amp, cfg.train.channels_last),
                           BatchPlan(int(cfg.train.batch_size), 1), iterations_per_epoch=1000,
                           log=lambda message: None)
    return create_trainer(parts.step, parts.oom)


def _bare_loop(model, cfg, targets, device) -> Callable[[list], None]:
    """The loop one would write by hand: AdamW, autocast, summed weighted cross-entropies."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    weights = list(targets.weights)
    amp = cfg.train.amp
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def run(data: list) -> None:
        model.train()
        for x, y in data:
            x = x.to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with (torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                  if amp != "off" else contextlib.nullcontext()):
                outs = model(x)
                loss = sum(w * F.cross_entropy(o.float(), y[:, t])
                           for t, (o, w) in enumerate(zip(outs, weights, strict=True)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def _paired_rates(runners: dict[str, Callable[[], None]], images: int, rounds: int, device) -> dict[str, dict]:
    """Images per wall second and per CPU second of this process, of each runner per round; one warmup round
    first; the order alternates between rounds."""
    rates: dict[str, dict] = {k: {"wall": [], "cpu": []} for k in runners}
    names = list(runners)
    for r in range(rounds + 1):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            runners[name]()
            _sync(device)
            if r:
                rates[name]["wall"].append(images / (time.perf_counter() - wall))
                rates[name]["cpu"].append(images / max(time.process_time() - cpu, 1e-9))
    return rates


def _python_ms(run: Callable[[], None], steps: int) -> float:
    """Milliseconds per step spent in Python code itself (not in torch's C++ operators), under cProfile."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return 1e3 * sum(entry[2] for key, entry in stats.items() if key[0] != "~") / steps


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _setup_model(args: argparse.Namespace):
    import torch

    from okkhor.targets import Targets
    from okkhor.training.setup import build_net

    device = torch.device(args.device)
    cfg = _bench_config(args)
    targets = Targets.from_class_map()
    torch.manual_seed(0)
    model = build_net(cfg.model, targets, device, args.channels_last)
    if args.compile:
        model = torch.compile(model)
    return cfg, targets, model, device


# ------------------------------------------------------------------------------------------------ sections

def trainer_overhead(args: argparse.Namespace) -> dict:
    """okkhor's training images/s (ignite Engine + the trainer's TrainStep) / a bare loop's, same model and data."""
    import torch

    cfg, targets, model, device = _setup_model(args)
    iters, rounds = (2, 5) if args.quick else (args.iters, args.rounds)  # many short rounds: load bursts fall out
    data = _random_batches(iters, args.batch, args.size, targets)
    engine = _okkhor_engine(model, cfg, targets, device)
    bare = _bare_loop(model, cfg, targets, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = _paired_rates({"okkhor": lambda: engine.run(data, max_epochs=1), "bare": lambda: bare(data)},
                          iters * args.batch, rounds, device)
    ratios = {kind: [o / b for o, b in zip(rates["okkhor"][kind], rates["bare"][kind], strict=True)]
              for kind in ("wall", "cpu")}
    python_ms = {"okkhor": _python_ms(lambda: engine.run(data, max_epochs=1), iters),
                 "bare": _python_ms(lambda: bare(data), iters)}
    step_ms = 1e3 * args.batch / statistics.median(rates["bare"]["cpu"])
    # on a CPU the rate per CPU second of this process is the steadier one when other jobs share the cores (the
    # work compared is all in this process); on a GPU the wall clock is what counts
    kind = "cpu" if device.type == "cpu" else "wall"
    value = statistics.median(ratios[kind])
    out = {"value": round(value, 3), "goal": ">= 0.95", "ok": value >= 0.95, "measure": f"images per {kind} second",
           "okkhor_images_per_s": round(statistics.median(rates["okkhor"]["wall"]), 1),
           "bare_images_per_s": round(statistics.median(rates["bare"]["wall"]), 1),
           "okkhor_images_per_cpu_s": round(statistics.median(rates["okkhor"]["cpu"]), 1),
           "bare_images_per_cpu_s": round(statistics.median(rates["bare"]["cpu"]), 1),
           "wall_ratio": round(statistics.median(ratios["wall"]), 3),
           "cpu_ratio": round(statistics.median(ratios["cpu"]), 3),
           "cpu_ratio_of_medians": round(statistics.median(rates["okkhor"]["cpu"])
                                         / statistics.median(rates["bare"]["cpu"]), 3),
           "round_ratios": {k: [round(r, 3) for r in v] for k, v in ratios.items()},
           "python_ms_per_step": {k: round(v, 2) for k, v in python_ms.items()},
           "python_overhead_share": round((python_ms["okkhor"] - python_ms["bare"]) / step_ms, 4),
           "setup": f"{args.model} {args.size} px, batch {args.batch}, amp {args.amp}, channels_last "
                    f"{args.channels_last}, compile {args.compile}, {args.device}, {_threads()} torch threads; "
                    f"{rounds} paired rounds of {iters} steps on in-memory batches after one warmup round; value = "
                    f"median of the per-round ratios of images per {kind} second",
           "note": "python_overhead_share = (okkhor's - bare's Python self time per step, under cProfile, which "
                   "inflates it) / the bare step's CPU time: what okkhor's own code adds, measured without the "
                   "machine's load in it (an upper bound). okkhor = an ignite Engine running the TrainStep the "
                   "trainer builds (okkhor.training.setup: build_optimizer, one-cycle schedule, loss with the mixer, "
                   "GradScaler, OomRecovery runner); the trainer's progress bar and TensorBoard "
                   "handlers are not attached. bare = AdamW + autocast + summed cross-entropies by hand. Both train "
                   "the same model object on the same in-memory batches",
           "command": _command(args, "trainer_overhead")}
    if device.type == "cuda":
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def data_stall(args: argparse.Namespace) -> dict:
    """Share of training wall time spent waiting for the next batch: trainer-like loader, default aug and workers."""
    import numpy as np
    import torch
    from ignite.engine import Events
    from torch.utils.data import DataLoader

    from okkhor.data.augment import build_augment
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.data.sets import EpochBatches
    from okkhor.training.step import BatchPlan

    cfg, targets, model, device = _setup_model(args)
    presets = [cfg.aug.preset] + ([] if args.quick else [p for p in ("medium",) if p != cfg.aug.preset])
    warm, timed = (2, 6) if args.quick else (3, 12)
    n = args.batch * (warm + timed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="okkhor-stall-") as tmp:
        rng = np.random.default_rng(0)
        images = np.lib.format.open_memmap(Path(tmp) / "train.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, args.size, args.size))
        s = args.size
        for i in range(n):  # a bright block of "ink" on black, like the prepared cache
            y0, x0 = rng.integers(0, s // 2, 2)
            images[i, y0:y0 + s // 2, x0:x0 + s // 3] = rng.integers(128, 256)
        images.flush()
        labels = np.stack([rng.integers(0, k, n) for k in targets.num_classes], 1)
        for preset in presets:
            cfg.aug.preset = preset
            dataset = GraphemeDataset(images, labels, augment=build_augment(cfg.aug, s), seed=0)
            sampler = EpochBatches(n, BatchPlan(args.batch, 1), seed=0)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers,
                                pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
            engine = _okkhor_engine(model, cfg, targets, device)
            waits: list[float] = []
            marks: dict[str, float] = {}

            def started(engine, marks=marks) -> None:
                marks["get"] = time.perf_counter()
                if engine.state.iteration == warm:
                    _sync(device)
                    marks["start"] = marks["get"]

            def completed(engine, marks=marks, waits=waits) -> None:
                if engine.state.iteration >= warm:
                    waits.append(time.perf_counter() - marks["get"])

            engine.add_event_handler(Events.GET_BATCH_STARTED, started)
            engine.add_event_handler(Events.GET_BATCH_COMPLETED, completed)
            engine.run(loader, max_epochs=1)
            _sync(device)
            total = time.perf_counter() - marks["start"]
            results[preset] = {"stall": round(sum(waits) / total, 4), "batches_timed": len(waits),
                               "seconds": round(total, 2), "images_per_s": round(len(waits) * args.batch / total, 1)}
    default = results[presets[0]]["stall"]
    return {"value": default, "goal": "<= 0.05", "ok": default <= 0.05, "by_preset": results,
            "setup": f"aug.preset={presets[0]} (the default) and data.workers={cfg.data.workers} (the default); "
                     f"{args.model} {args.size} px, batch {args.batch}, amp {args.amp}, {args.device}; a "
                     f"memory-mapped uint8 cache, GraphemeDataset + EpochBatches + DataLoader as the trainer "
                     f"builds them; {warm} warmup batches not timed",
            "command": _command(args, "data_stall")}


def precision(args: argparse.Namespace) -> dict:
    """bf16 autocast against fp32: okkhor's training images/s (TrainStep in an Engine, channels_last) of each on
    this machine, interleaved rounds; with what `train.amp: auto` picks here and why."""
    import torch

    from okkhor.utils.devices import bf16_support, choose_amp, cpu_name

    device = torch.device(args.device)
    model_name = "resnet10t" if args.model == DEFAULTS["model"] else args.model  # the demo's model
    batch, iters, rounds = (16, 1, 3) if device.type == "cpu" else (args.batch, 10, 3)
    runners = {}
    for amp in ("off", "bf16"):
        run = argparse.Namespace(**{**vars(args), "model": model_name, "batch": batch, "amp": amp,
                                    "channels_last": True})
        cfg, targets, model, _ = _setup_model(run)
        data = _random_batches(iters, batch, args.size, targets)
        engine = _okkhor_engine(model, cfg, targets, device)
        runners[amp] = (lambda engine=engine, data=data: engine.run(data, max_epochs=1))
    rates = _paired_rates(runners, iters * batch, rounds, device)
    kind = "cpu" if device.type == "cpu" else "wall"
    fp32, bf16 = (statistics.median(rates[a][kind]) for a in ("off", "bf16"))
    value = bf16 / fp32
    support = bf16_support(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"value": round(value, 3), "goal": "reported (bf16/fp32 images per second)", "ok": None,
            "bf16_images_per_s": round(bf16, 1), "fp32_images_per_s": round(fp32, 1), "measure": f"per {kind} second",
            "device_name": name, "auto_picks": choose_amp("auto", device)[0], "auto_reason": support.reason,
            "setup": f"{model_name} {args.size} px, batch {batch}, channels_last, {args.device}, {_threads()} torch "
                     f"threads; {rounds} interleaved rounds of {iters} steps after one warmup round; median images "
                     f"per {kind} second of each",
            "command": _command(args, "precision")}


def predict_speed(args: argparse.Namespace) -> dict:
    """okkhor.inference.predict.ensemble_probs images/s (the path of `okkhor predict` and `okkhor evaluate`: uint8
    batches, TTA views in one forward, autocast and channels_last where the device runs them fast, one host copy per
    batch) of a fresh model on random uint8 images."""
    import numpy as np

    from okkhor.inference.predict import Member, ensemble_probs

    cfg, targets, model, device = _setup_model(args)
    model.eval()
    n = max(2 * args.batch, 64) if device.type == "cpu" else 20 * args.batch
    images = np.random.default_rng(0).integers(0, 256, (n, args.size, args.size), dtype=np.uint8)
    member = Member(Path("bench"), model, cfg, targets, {})
    rates = {}
    for tta in (1, 2):
        ensemble_probs([member], {member.preprocessing: images[:args.batch]}, tta=tta, batch_size=args.batch)
        _sync(device)
        start = time.perf_counter()
        ensemble_probs([member], {member.preprocessing: images}, tta=tta, batch_size=args.batch)
        _sync(device)
        rates[tta] = n / (time.perf_counter() - start)
    return {"value": round(rates[1], 1), "goal": "reported", "ok": None, "unit": "images/s",
            "tta2_images_per_s": round(rates[2], 1),
            "setup": f"{args.model} {args.size} px, batch {args.batch}, {args.device}; {n} random images, one "
                     "warmup batch; tta 1 (value) and tta 2",
            "command": _command(args, "predict_speed")}


def _recipe_ratio(result: dict, suffix: str) -> float | None:
    """The largest ratio whose key ends with `suffix` over the models of a recipe_cost comparison."""
    ratios = [v for entry in result.values() for k, v in entry.items() if k.endswith(suffix)]
    return max(ratios) if ratios else None


def mixing_cost(args: argparse.Namespace) -> dict:
    """Step time with mixup, cutmix and Dirichlet mixing divided by the step time without mixing."""
    import recipe_cost

    warmup, repeats = (1, 3) if args.quick else (2, args.rounds)
    result = recipe_cost.mixing_cost(models=(args.model,), kinds=("none", "mixup", "cutmix", "dirichlet"),
                                     size=args.size, batch=args.batch, warmup=warmup, repeats=repeats,
                                     device=args.device)
    additive = _recipe_ratio(result, "_overhead/none")   # 1 + (mixing work timed alone) / step(none)
    whole = max(v for e in result.values() for k, v in e.items() if k.endswith("/none") and "_overhead" not in k)
    worst = additive if additive is not None else whole
    return {"value": worst, "goal": "<= 1.02", "ok": worst <= 1.02, "whole_step_ratio": whole, "by_model": result,
            "setup": f"{args.model} {args.size} px, batch {args.batch}, fp32, {args.device}, {_threads()} torch "
                     f"threads; value = the worst kind "
                     + ("of 1 + mix_ms / step(none), the mixing work timed alone (recipe_cost), since whole-step "
                        "ratios on a shared machine carry more noise than the effect; whole_step_ratio is the worst "
                        if additive is not None else "of ")
                     + f"whole-step ratio, median of {repeats} round-robin rounds after {warmup} warmup",
            "command": _command(args, "mixing_cost")}


def activation_cost(args: argparse.Namespace) -> dict:
    """Step time with mish and silu divided by relu, for efficientnet_b0 and resnet18 at 64 px."""
    import recipe_cost

    warmup, repeats = (1, 3) if args.quick else (2, args.rounds)
    result = recipe_cost.activation_cost(models=("efficientnet_b0", "resnet18"), acts=("relu", "silu", "mish"),
                                         size=64, batch=args.batch, warmup=warmup, repeats=repeats,
                                         device=args.device)
    return {"value": _recipe_ratio(result, "/relu"), "goal": "reported (no goal)", "ok": None, "by_model": result,
            "setup": f"64 px, batch {args.batch}, fp32, {args.device}, {_threads()} torch threads; value = the "
                     f"largest ratio; median of "
                     f"{repeats} round-robin rounds after {warmup} warmup",
            "command": _command(args, "activation_cost")}


def memory_fit(args: argparse.Namespace) -> dict:
    """`okkhor memory`'s prediction at a batch size it did not measure, against the measured peak."""
    from okkhor.training import memory

    batches = (2, 4, 8, 16) if args.quick else (8, 16, 32, 64)
    size = 32 if args.quick else 64
    fit = memory.probe(args.model, size, "fp32", args.device, batches=batches)
    measured = [(b, {"backward": bw, "optimizer": fit.optimizer_bytes, "peak": p})
                for b, bw, p in zip(fit.batches, fit.backward_peaks, fit.peaks, strict=False)]
    partial = memory.MemoryFit.fitted(fit.model, size, "fp32", fit.device, fit.method, measured[:-1])
    error = (partial.predict(batches[-1]) - fit.peaks[-1]) / fit.peaks[-1]
    return {"value": round(abs(error), 4), "goal": "<= 0.15", "ok": abs(error) <= 0.15,
            "signed_error": round(error, 4), "fit_on": list(batches[:-1]), "checked_at": batches[-1],
            "fit": partial.to_dict(), "measured_at_check_bytes": fit.peaks[-1],
            "setup": f"{args.model} {size} px fp32 on {fit.device}",
            "command": f"okkhor memory --model {args.model} --image-size {size} --device {fit.device} "
                       f"--batches {','.join(map(str, batches))}"}


def prepare(args: argparse.Namespace) -> dict:
    """`okkhor prepare --size 128` on 50,210 synth images in both parquet layouts (row groups of 4,096, and one
    row group as the competition's files have): images/s per core, wall images/s and peak RSS of each."""
    import prepare_bench

    rows = 5021 if args.quick else 50210
    r = prepare_bench.run(rows=rows, size=128)
    layouts = {name: r[name] for name in prepare_bench.LAYOUTS}
    per_core = min(m["images_per_cpu_s"] for m in layouts.values())
    rss_mb = max(m["peak_rss_mb"] for m in layouts.values())
    keys = ("images_per_cpu_s", "images_per_s", "peak_rss_mb", "row_groups", "file_mb")
    before = {}
    try:  # the same measurement of the reader before issue 15, kept with the command that made it
        baseline = json.loads((BENCH / "prepare_baseline.json").read_text(encoding="utf-8"))
        if baseline.get("prepare_rows") == rows:
            before = {"before_by_layout": {name: {k: baseline[name][k] for k in keys} for name in layouts},
                      "before_command": baseline["command"], "before_measured_at": baseline["measured_at"]}
    except (OSError, ValueError, KeyError):
        pass
    return {"value": per_core, "goal": ">= 2000 images/s per core and peak RSS < 1.5 GB, both layouts",
            "ok": per_core >= 2000 and rss_mb * (1 << 20) < 1.5e9,
            "prepare_by_layout": {name: {k: m[k] for k in keys} for name, m in layouts.items()}, **before,
            "setup": f"{rows} okkhor synth images (seed {prepare_bench.SEED}), --size 128, default --workers, on "
                     f"{r['cpu']}; value = the slower layout's images per CPU second (user + system, all threads)",
            **{k: v for k, v in r.items() if k not in layouts},
            "command": f"python bench/prepare_bench.py --rows {rows} --size 128"}


def synth(args: argparse.Namespace) -> dict:
    """`okkhor synth` images/s with 2 worker processes."""
    try:
        import synth_speed
    except ImportError:
        return {"value": None, "reason": "bench/synth_speed.py is missing"}
    n = 4000 if args.quick else 20_000  # two files either way (a split of 4,000 or more is at least two)
    r = synth_speed.run(train=n, test=0, workers=2)
    rate = r["synth_images_per_s"]
    return {"value": rate, "goal": ">= 800 images/s on 2 cores", "ok": rate >= 800, **r,
            "command": f"python bench/synth_speed.py --train {n} --workers 2"}


def demo(args: argparse.Namespace) -> dict:
    """The demo's wall time and final score, from the file `make demo` writes."""
    path = ROOT / "demo" / "demo.json"
    if not path.is_file():
        return {"value": None, "reason": f"not run: {path.relative_to(ROOT)} is missing (make demo writes it)",
                "command": "make demo"}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"value": data.get("seconds"), "unit": "seconds", "goal": "reported", "ok": None,
            "score": data.get("score"), "seen": data.get("seen"), "unseen": data.get("unseen"),
            "written": time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
            "command": "make demo"}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "trainer_overhead": trainer_overhead, "data_stall": data_stall, "mixing_cost": mixing_cost,
    "activation_cost": activation_cost, "memory_fit": memory_fit, "prepare": prepare, "synth": synth, "demo": demo,
    "precision": precision, "predict_speed": predict_speed,
}
# on a CPU, sections that compare timings run single-threaded unless --threads says otherwise: with other jobs on
# the cores, a second torch thread spends its time spinning and the per-round ratios scatter by tens of per cent
ONE_THREAD_ON_CPU = ("trainer_overhead", "mixing_cost", "activation_cost", "precision")
UNITS = {"trainer_overhead": "ratio", "data_stall": "share", "mixing_cost": "ratio", "activation_cost": "ratio",
         "memory_fit": "relative error", "prepare": "images/s per core", "synth": "images/s", "demo": "seconds",
         "precision": "ratio", "predict_speed": "images/s"}


def run_section(name: str, args: argparse.Namespace) -> dict:
    """One section, timed; a failure or a missing piece of okkhor becomes a null value with the reason."""
    import torch

    start = time.perf_counter()
    stamp = {"measured_at": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.device == "cpu" and name in ONE_THREAD_ON_CPU:
        torch.set_num_threads(1)
    try:
        result = SECTIONS[name](args)
    except (ImportError, AttributeError) as exc:
        result = {"value": None, "reason": f"a piece it needs is missing: {type(exc).__name__}: {exc}"}
    except BaseException as exc:  # noqa: BLE001 - one section must not stop the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {"value": None, "reason": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  "traceback_tail": traceback.format_exc().strip().splitlines()[-3:]}
    finally:
        torch.set_num_threads(threads)
    result.setdefault("command", _command(args, name))
    result["unit"] = result.get("unit", UNITS[name])
    result["section_seconds"] = round(time.perf_counter() - start, 1)
    result.update(stamp)
    return result


# ------------------------------------------------------------------------------------------------ output

def machine_info(args: argparse.Namespace) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
            "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def write_markdown(path: Path, report: dict) -> None:
    from okkhor.utils.files import write_text_atomic

    m = report["machine"]
    lines = ["# Benchmark results", "",
             f"Measured {report['date']} by `{report['command']}` in {report['seconds']:.0f} s on {m['platform']}, "
             f"{m['cpus']} CPUs (torch {m['torch']}, {m['torch_threads']} threads, device {m['device']}); load "
             f"average {m['loadavg_1m_before']} before, {m.get('loadavg_1m_after', '?')} after. Every figure is a "
             "ratio or a rate measured within one run on this machine; rerun its command to reproduce it. On a shared "
             "machine the rates are lower bounds and the ratios carry the noise shown in results.json (per-round "
             "values).",
             *[f"Rerun {r['date']}: {', '.join(r['sections'])} by `{r['command']}`." for r in report.get("reruns", [])],
             "",
             "| figure | value | unit | goal | met | reproduce |", "|---|---|---|---|---|---|"]
    for name, r in report["sections"].items():
        met = {True: "yes", False: "**no**", None: "-"}[r.get("ok")]
        value = _fmt(r.get("value")) if r.get("value") is not None else f"null ({r.get('reason', '?')})"
        lines.append(f"| {name} | {value} | {r.get('unit', '')} | {r.get('goal', '')} | {met} | "
                     f"`{r.get('command', '')}` |")
    lines += ["", "## Details", ""]
    for name, r in report["sections"].items():
        if r.get("value") is None:
            lines.append(f"- **{name}**: {r.get('reason', 'no value')}")
            continue
        detail = r.get("setup") or ""
        extra = {k: r[k] for k in ("wall_ratio", "cpu_ratio", "python_overhead_share", "python_ms_per_step",
                                   "okkhor_images_per_s", "bare_images_per_s",
                                   "round_ratios", "by_preset", "whole_step_ratio", "peak_memory_bytes",
                                   "signed_error", "prepare_by_layout", "before_by_layout", "score",
                                   "seen", "unseen", "synth_images_per_cpu_s", "synth_load_before") if k in r}
        for key in ("by_model",):
            if key in r:
                extra[key] = {model: {k: v for k, v in e.items() if "/" in k} for model, e in r[key].items()}
        lines.append(f"- **{name}**: {detail}{'; ' if detail and extra else ''}"
                     f"{json.dumps(extra) if extra else ''}")
        if r.get("note"):
            lines.append(f"  {r['note']}")
    write_text_atomic(path, "\n".join(lines) + "\n")


DEFAULTS = {"device": "cpu", "model": "resnet18", "size": 64, "batch": 64, "amp": "off", "iters": 2, "rounds": 9}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help=f"reduced {', '.join(QUICK_SECTIONS)}; writes nothing")
    ap.add_argument("--json", action="store_true", help="print one JSON object with a key per section")
    ap.add_argument("--only", action="append", default=[], choices=list(SECTIONS), help="run this section")
    ap.add_argument("--device", default=DEFAULTS["device"], choices=("cpu", "cuda"))
    ap.add_argument("--model", default=DEFAULTS["model"], help="model of the timed training sections")
    ap.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side of the timed training")
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    ap.add_argument("--amp", default=DEFAULTS["amp"], choices=("off", "bf16", "fp16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    ap.add_argument("--iters", type=int, default=DEFAULTS["iters"], help="steps per timed segment (full run)")
    ap.add_argument("--rounds", type=int, default=DEFAULTS["rounds"], help="paired rounds (full run)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for every section (0: 1 for the timing comparisons on a CPU, torch's "
                         "default for the rest)")
    ap.add_argument("--no-write", action="store_true", help="do not write results.json / RESULTS.md")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    ap.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.quick and not args.only:
        args.only = list(QUICK_SECTIONS)
    if args.quick:
        args.size, args.batch = min(args.size, 32), min(args.batch, 32)
    args.write = not (args.no_write or args.quick)
    return args


def _merged(args: argparse.Namespace, report: dict) -> dict:
    """A run of some sections updates those in the existing results (same platform), keeping the others; each
    section carries its own measured_at and load average."""
    try:
        old = json.loads(args.out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return report
    if old.get("machine", {}).get("platform") != report["machine"]["platform"] or "sections" not in old:
        return report
    old["sections"].update(report["sections"])
    old.setdefault("reruns", []).append({"date": report["date"], "command": report["command"],
                                         "sections": list(report["sections"]), "seconds": report["seconds"]})
    return old


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names = args.only or list(SECTIONS)
    started = time.perf_counter()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"),
                              "command": " ".join(["python", "bench/run.py", *(argv if argv is not None
                                                                                 else sys.argv[1:])]),
                              "machine": machine_info(args), "sections": {}}
    for name in names:
        if not args.json:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
        report["sections"][name] = run_section(name, args)
        if not args.json:
            r = report["sections"][name]
            print(f"bench: {name}: {_fmt(r.get('value'))} {r.get('unit', '')} (goal {r.get('goal', '-')}) "
                  f"{r.get('reason', '')}", file=sys.stderr, flush=True)
    report["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.write:
        from okkhor.utils.files import write_text_atomic

        written = _merged(args, report) if args.only else report
        write_text_atomic(args.out, json.dumps(written, indent=1) + "\n")
        write_markdown(args.markdown, written)
    if args.json:
        print(json.dumps({**report["sections"], "machine": report["machine"], "seconds": report["seconds"]}))
    return report


if __name__ == "__main__":
    main()
