"""The ignite trainer, wired: data, model, optimizer and schedule into `create_trainer`; evaluator Engines,
handlers, checkpoints and resume attached to it.

A run directory holds:
  config.yaml                 the resolved config (targets listed in its header comment)
  metrics.csv                 epoch,split,loss,score,recall_<target>...,lr,seconds; one row per (epoch, split),
                              split = train | train_clean | valid; `train` is the mean training loss of the
                              epoch's iterations (no score); seconds = time since the epoch began, when the row's
                              evaluation (train: the training) finished; lr = the learning rate at the end of the epoch
  run.json                    the data directory the run read
  checkpoints/last.pt         every epoch, and mid-epoch on SIGTERM/SIGINT and every train.checkpoint_every
                              iterations; checkpoints/best.pt when the valid score improves (training.checkpoints)
  tb/                         TensorBoard events
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from okkhor.config import Config
from okkhor.data.folds import check_same_data
from okkhor.data.sets import EpochBatches, load_run_data
from okkhor.errors import OkkhorError
from okkhor.models.graphemes import grapheme_classes, with_grapheme_column
from okkhor.targets import Targets
from okkhor.training.checkpoints import (
    GlobalRng,
    PerProcess,
    RunCheckpoints,
    TrainerState,
    load_training_checkpoint,
    remove_stale_temps,
)
from okkhor.training.distributed import (
    barrier,
    is_main,
    process_group,
    rank,
    resolve_device,
    shard,
    sync_buffers,
    world_size,
)
from okkhor.training.handlers import (
    EpochMeter,
    Evaluation,
    Preemption,
    RunLog,
    RunState,
    StopLine,
    metrics_columns,
    summary_line,
)
from okkhor.training.optim import SCHEDULE_SPECS, build_optimizer, build_scheduler, steps_per_epoch
from okkhor.training.step import (
    BatchPlan,
    Precision,
    TrainLoss,
    TrainStep,
    class_counts,
    create_evaluator,
    create_trainer,
)
from okkhor.training.tracking import open_trackers
from okkhor.utils.files import check_writable, write_text_atomic
from okkhor.utils.sizes import size_text

__all__ = ["train", "EpochBatches", "load_run_data", "metrics_columns", "RESUMABLE_KEYS"]

# config keys a resumed run may change; everything else must match the checkpoint
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.device", "train.compile", "train.checkpoint_every",
                  "data.workers", "data.persistent_workers", "data.prefetch_factor", "eval.batch_size", "log.wandb",
                  "log.mlflow")
# the batch plan: the sample order, the epoch length and the schedule's steps follow it, so a resume keeps it
PLAN_KEYS = ("train.batch_size", "train.accum", "train.effective_batch")


# ---------------------------------------------------------------------------------------------------- config

def resolve_targets(data_dir: str | Path, cfg: Config) -> tuple[Targets, list[float]]:
    """The run's targets (metric weights from the class map) and its loss weights."""
    from okkhor.io.kaggle import load_targets

    targets = load_targets(data_dir, cfg.data.class_map, cfg.data.targets)
    weights = list(cfg.train.loss_weights) or list(targets.weights)
    if len(weights) != len(targets):
        raise OkkhorError(f"config: train.loss_weights has {len(weights)} values for {len(targets)} targets "
                          f"({', '.join(targets.names)})")
    return targets, weights


def resolved_config(cfg: Config, targets: Targets, loss_weights: list[float],
                    precision: Precision | None = None) -> Config:
    """The config with the target list and loss weights spelled out, and `auto` precision settings resolved."""
    out = copy.deepcopy(cfg)
    out.data.targets = list(targets.names)
    out.train.loss_weights = [float(w) for w in loss_weights]
    if precision is not None:
        out.train.amp, out.train.channels_last = precision.amp, bool(precision.channels_last)
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume_config(saved: dict, cfg: Config, path: Path) -> None:
    """Fail when the config differs from the checkpoint's in anything but RESUMABLE_KEYS (or, for a shaped lr
    schedule, in train.epochs)."""
    # a key newer than the checkpoint counts as unchanged when it holds its default
    old, new, default = _flatten(saved), _flatten(cfg.to_dict()), _flatten(Config().to_dict())
    plan = [k for k in PLAN_KEYS if old.get(k, default.get(k)) != new[k]]
    if plan:
        detail = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in plan)
        keep = " ".join(f"--set {k}={old.get(k)}" for k in plan)
        raise OkkhorError(f"--resume: the batch plan changed: {detail}; {path}'s sample order and learning-rate "
                          f"schedule are laid out in its batches; resume with {keep}, or start a new run")
    changed = [k for k in new if old.get(k, default.get(k)) != new[k] and k not in RESUMABLE_KEYS]
    if changed:
        detail = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:6])
        raise OkkhorError(f"--resume: {path} was trained with a different config: {detail}; only "
                          f"{', '.join(RESUMABLE_KEYS)} may change")
    if old["train.epochs"] != new["train.epochs"] and SCHEDULE_SPECS[cfg.train.schedule].fixed_length:
        raise OkkhorError(f"--resume: train.epochs changed ({old['train.epochs']} -> {new['train.epochs']}) but "
                          f"the {cfg.train.schedule} learning-rate schedule is laid out over the run's length; "
                          "resume with the same train.epochs, or start a new run")


def check_resume_world(ckpt: dict, world: int, path: Path) -> None:
    """Fail when the number of processes differs from the checkpoint's: each process's share of the samples, its
    random states and the schedule's length follow it."""
    trainer = ckpt["trainer"]
    saved = int(trainer.get("world_size", len(ckpt.get("rng", {}).get("ranks", [0]))))
    if saved != world:
        launch = "torchrun --nproc_per_node ..." if saved > 1 else "one process (no torchrun)"
        raise OkkhorError(f"--resume: {path} was trained with {saved} process{'es' if saved > 1 else ''} and this "
                          f"run has {world}; the sample shares, random states and schedule follow the count: resume "
                          f"with {saved} ({launch}), or start a new run")


def initial_batch_plan(cfg: Config, model: torch.nn.Module, device: torch.device) -> BatchPlan:
    """The micro-batch plan a new run starts with: the config's numbers, or for `train.batch_size: auto` the
    choice of `okkhor.training.memory.choose_batch(model, cfg, device) -> (batch_size, accum)`.

    OOM recovery changes the live plan later (engine.state.batch_plan).
    """
    if cfg.train.batch_size != "auto":
        return BatchPlan(int(cfg.train.batch_size), cfg.train.accum)
    from okkhor.training.memory import choose_batch

    batch_size, accum = choose_batch(model, cfg, device)
    return BatchPlan(int(batch_size), int(accum))


# ---------------------------------------------------------------------------------------------------- the run

@dataclass
class _TestHooks:
    """Test-only controls, reached through `_train`: not part of the config or of `train()`."""

    stop_after: int = 0    # stop after this epoch as if interrupted (0: run all train.epochs)
    oom_at: int = -1       # raise an injected out-of-memory error at this iteration (-1: never)
    signal_at: int = 0     # send this process SIGTERM after this iteration (0: never), as a preemption would


def train(data_dir: str | Path, out_dir: str | Path, cfg: Config, resume: bool = False, *,
          show_progress: bool = True, log: Callable[[str], None] = print, init: str | Path | None = None) -> dict:
    """Train a model on DATA_DIR's training fold and write the run directory OUT_DIR; returns the final metrics.

    resume: continue exactly from OUT_DIR/checkpoints/last.pt (the config must match the checkpoint's, except
      RESUMABLE_KEYS). init: start a new run from this checkpoint's weights (okkhor.training.finetune.init_from).
    Under torchrun, every process calls this; the first one alone writes files and prints.
    Returns {"epoch", "best_score", "best_epoch", "stop_reason", "valid": {...}, "train_clean": {...}}.
    """
    return _train(data_dir, out_dir, cfg, resume, show_progress=show_progress, log=log, init=init)


def _train(data_dir: str | Path, out_dir: str | Path, cfg: Config, resume: bool = False, *,
           show_progress: bool = True, log: Callable[[str], None] = print, init: str | Path | None = None,
           **hooks: int) -> dict:
    """`train` with _TestHooks (stop_after=, oom_at=) for tests."""
    with process_group(cfg.train.device):
        main = is_main()
        log = log if main else (lambda message: None)
        return _run(Path(data_dir), Path(out_dir), cfg, resume, show_progress and main, log, _TestHooks(**hooks),
                    Path(init) if init is not None else None)


def _result(epoch: int, state: dict) -> dict:
    return {"epoch": epoch, "best_score": state["best_score"], "best_epoch": state["best_epoch"],
            "stop_reason": state["stop_reason"], **state["metrics"]}


def _open(data_dir: Path, out_dir: Path, cfg: Config, resume: bool, log, init: Path | None = None):
    """Checks before any work: the run dir, the device, the targets, the checkpoint to resume (or None).

    --resume on a run dir without a checkpoint yet (a run killed in its first epoch, or one not started) starts
    the run from the beginning, so a job script can always pass --resume.
    """
    last = out_dir / "checkpoints" / "last.pt"
    if is_main():
        check_writable(out_dir, "--out", folder=True)
        remove_stale_temps(last.parent)  # what a save killed midway left
    if resume and init is not None:
        raise OkkhorError("--init and --resume exclude each other (a resumed run continues from its last.pt)")
    fresh = resume and not last.is_file()
    if not resume and last.is_file():
        raise OkkhorError(f"{out_dir}: already holds a run ({last}); pass --resume to continue it "
                          "or choose another --out")
    device = resolve_device(cfg.train.device)
    targets, loss_weights = resolve_targets(data_dir, cfg)
    if fresh:
        if not data_dir.is_dir():  # before the line below: a bad --data stays one error line
            raise OkkhorError(f"{data_dir}: data directory not found")
        log(f"train: --resume: {out_dir} holds no checkpoint yet; starting from the beginning")
    ckpt = load_training_checkpoint(last) if resume and not fresh else None
    amp, channels_last = cfg.train.amp, cfg.train.channels_last
    if ckpt is not None:  # `auto` resumes with what the run chose (resolved in its stored config)
        saved = ckpt["config"]["train"]
        amp = saved.get("amp", amp) if amp == "auto" else amp
        channels_last = saved.get("channels_last", channels_last) if channels_last == "auto" else channels_last
    precision = Precision(device, amp, channels_last)
    cfg = resolved_config(cfg, targets, loss_weights, precision)
    if ckpt is not None:
        check_resume_config(ckpt["config"], cfg, last)
        check_resume_world(ckpt, world_size(), last)
        if ckpt["targets"] != targets.to_dict():
            raise OkkhorError(f"--resume: {last} was trained on other targets ({ckpt['targets']['names']})")
    return cfg, targets, loss_weights, precision, ckpt


def _build(cfg: Config, targets: Targets, loss_weights: list[float], precision: Precision, ckpt, data_dir: Path,
           log, show_progress: bool, hooks: _TestHooks, init: Path | None = None) -> SimpleNamespace:
    """Model, data, optimizer, schedule, mixer, EMA, OOM recovery and the training step of a run."""
    from okkhor.data.augment import build_augment
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.models.model import build_model
    from okkhor.training.mixing import Mixer
    from okkhor.training.oom import FaultInjector, OomRecovery
    from okkhor.utils.devices import set_backend_flags

    tcfg, device, rank_, world = cfg.train, precision.device, rank(), world_size()
    backend_flags = set_backend_flags(device, tcfg.deterministic)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    graphemes = data = None
    if cfg.model.grapheme_head:  # the head's classes are the label triples of the training images
        data = load_run_data(data_dir, cfg, targets, log, show_progress)
        graphemes = grapheme_classes(data.labels[data.train_idx])
    net = build_model(cfg.model, targets, graphemes)  # before the data: a bad model or plan fails fast
    if init is not None:
        from okkhor.training.finetune import init_from

        init_from(net, init, cfg.model.name, targets, log)
    net.to(device, memory_format=torch.channels_last if precision.channels_last else torch.contiguous_format)
    plan = BatchPlan(**ckpt["run"]["batch"]) if ckpt else initial_batch_plan(cfg, net, device)
    data = data or load_run_data(data_dir, cfg, targets, log, show_progress)
    # with the grapheme head its class is one more label column and its loss one more weighted term
    labels = data.labels if graphemes is None else with_grapheme_column(data.labels, graphemes)
    loss_weights = list(loss_weights) + ([tcfg.grapheme_loss_weight] if graphemes is not None else [])
    ema = None
    if tcfg.ema > 0:
        from timm.utils import ModelEmaV3

        # warmup: the averaging horizon grows with the step count up to 1/(1-ema), so short runs work too
        ema = ModelEmaV3(net, decay=tcfg.ema, use_warmup=True)
    model: torch.nn.Module = net
    if world > 1:
        # plain DDP rather than idist.auto_model: that one moves the model to a GPU even for train.device=cpu
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(net, tcfg)

    def loader(dataset, **kw) -> DataLoader:
        # workers send uint8 batches (pinned for CUDA); the device scales them (Precision.images)
        kw.setdefault("generator", torch.Generator().manual_seed(0))
        if cfg.data.workers:
            kw.update(persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor)
        return DataLoader(dataset, shuffle=False, num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                          **kw)

    train_set = GraphemeDataset(data.images, labels, data.train_idx,
                                augment=build_augment(cfg.aug, cfg.data.image_size), seed=cfg.seed)
    batches = EpochBatches(len(train_set), plan, cfg.seed, rank_, world)
    generator = torch.Generator()
    train_loader = loader(train_set, batch_sampler=batches, generator=generator)
    eval_loaders = {split: loader(GraphemeDataset(data.images, labels, shard(idx, rank_, world)),
                                  batch_size=cfg.eval.batch_size)
                    for split, idx in (("train_clean", data.clean_idx), ("valid", data.valid_idx)) if len(idx)}
    schedule = build_scheduler(optimizer, tcfg, len(train_loader), plan.accum)
    mixer = Mixer(cfg.mix, seed=cfg.seed + rank_)  # each process mixes its own batch its own way
    # out-of-memory recovery: redo a failed micro-batch in chunks; the plan shrinks at the epoch's end
    oom = OomRecovery(plan, net, log=log, injector=FaultInjector(hooks.oom_at) if hooks.oom_at != -1 else None)
    step = TrainStep(model, optimizer, plan, TrainLoss(loss_weights, tcfg.label_smoothing, tcfg.ohem, mixer),
                     precision=precision, scheduler=schedule, clip_grad=tcfg.clip_grad, ema=ema, runner=oom)
    return SimpleNamespace(net=net, ema=ema, plan=plan, data=data, optimizer=optimizer, schedule=schedule,
                           mixer=mixer, oom=oom, step=step, train_set=train_set, batches=batches, generator=generator,
                           train_loader=train_loader, eval_loaders=eval_loaders, loss_weights=loss_weights,
                           device=device, world=world, precision=precision, backend_flags=backend_flags,
                           loader=loader)


def _run(data_dir: Path, out_dir: Path, cfg: Config, resume: bool, show_progress: bool, log, hooks,
         init: Path | None = None) -> dict:
    from ignite.handlers import EarlyStopping

    cfg, targets, loss_weights, precision, ckpt = _open(data_dir, out_dir, cfg, resume, log, init)
    epochs = cfg.train.epochs
    if ckpt is not None:
        done = ckpt["trainer"]["epoch"]
        if ckpt["run"]["stop_reason"] == "early_stopping" or done >= epochs:
            log(f"train: {out_dir / 'checkpoints' / 'last.pt'} has finished ({ckpt['run']['stop_reason']} after "
                f"epoch {done}); nothing to do (with a schedule not laid out over train.epochs, raise it to train on)")
            return _result(done, ckpt["run"])
    b = _build(cfg, targets, loss_weights, precision, ckpt, data_dir, log, show_progress, hooks, init)
    last = out_dir / "checkpoints" / "last.pt"
    if ckpt is not None:
        check_same_data(ckpt.get("data"), b.data.fingerprint, last, data_dir / "folds.csv",
                        use="resume on the data it was trained on, or start a new run")
    trainer = create_trainer(b.step, b.oom)
    state = RunState(b.plan, epochs, hooks.stop_after)

    @trainer.on(Events.EPOCH_STARTED)
    def seed_epoch(engine) -> None:  # every epoch's order and augmentation follow from (seed, epoch) alone
        epoch = engine.state.epoch
        b.batches.set_epoch(epoch)  # the epoch travels to the workers with each index: (position, epoch)
        b.generator.manual_seed(cfg.seed * 100003 + epoch)
        engine.state.epoch_length = len(b.train_loader)  # the plan may have changed between epochs

    trainer.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "batch_plan", b.plan))
    meter = EpochMeter(epochs, show_progress).attach(trainer)
    eval_model = b.ema.module if b.ema is not None else b.net
    evaluator = create_evaluator(eval_model, targets, b.loss_weights, precision)
    evaluation = Evaluation({split: (evaluator, eval_model, loader) for split, loader in b.eval_loaders.items()},
                            state, then=b.schedule.step_epoch)
    # every process evaluates (and the first saves) the same batch-norm statistics
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: sync_buffers(b.net, eval_model))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, evaluation)
    early_stopping = EarlyStopping(cfg.train.patience, state.valid_score, trainer) if cfg.train.patience else None
    if early_stopping is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, early_stopping)  # calls trainer.terminate()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, state.decide)
    # every stateful object of a run, in load order (the global random states last): the checkpoint's contents
    to_load = {"model": b.net, "ema": b.ema.module if b.ema is not None else None, "optimizer": b.optimizer,
               "scheduler": b.schedule, "scaler": precision.scaler, "mixer": PerProcess(b.mixer),
               "trainer": TrainerState(trainer, b.step, lambda: len(b.train_loader), epochs, b.batches, b.world),
               "run": state, "early_stopping": early_stopping, "meter": meter, "rng": PerProcess(GlobalRng())}
    meta = {"config": cfg.to_dict(), "targets": targets.to_dict(),
            "train_class_counts": class_counts(b.data.labels[b.data.train_idx], targets), "data": b.data.fingerprint}
    swa = _swa(cfg, b, out_dir, meta, log) if cfg.train.swa_epochs else None
    if swa is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: swa.update(engine.state.epoch))
        to_load["swa"] = swa
    checkpoints = RunCheckpoints(out_dir / "checkpoints", {k: v for k, v in to_load.items() if v is not None}, meta,
                                 state.valid_score, keep_top=cfg.train.keep_top)
    run_log = RunLog(out_dir, targets) if is_main() else None

    @trainer.on(Events.EPOCH_COMPLETED)
    def end_epoch(engine) -> None:
        lr = float(b.optimizer.param_groups[0]["lr"])
        if run_log is not None:  # metrics first: a crash before the checkpoint only costs a rerun of this epoch
            run_log.add_epoch(engine.state.epoch, meter, evaluation, lr)
        checkpoints(engine)
        log(summary_line(engine.state.epoch, epochs, meter, state, lr, targets))
        barrier()
        if state.stop_reason != "running":
            engine.terminate()

    # mid-epoch checkpoints: on SIGTERM/SIGINT (then stop) and every train.checkpoint_every iterations
    again = f"okkhor train --data {data_dir} --out {out_dir} --resume" + (" (under the same torchrun launch)"
                                                                         if b.world > 1 else "")
    preemption = Preemption(checkpoints.save_last, checkpoints.last_path, lambda: b.step.at_step_boundary,
                            cfg.train.checkpoint_every, b.world, again if is_main() else "").attach(trainer)
    if hooks.signal_at:
        import os
        import signal

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=hooks.signal_at),
                                  lambda engine: os.kill(os.getpid(), signal.SIGTERM))
    preemption.attach_epoch_end(trainer)  # after end_epoch: a signal during the evaluation stops after its save
    trainer.add_event_handler(Events.EXCEPTION_RAISED, StopLine(checkpoints.last_path))
    if ckpt is not None:
        checkpoints.resume(ckpt, ckpt["run"]["best_score"])
    trackers: list = []   # W&B / MLflow (okkhor.training.tracking), when the config names them
    try:
        if run_log is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_config(out_dir, cfg, targets)
            run_info = {"data_dir": str(data_dir.resolve()), **({"init": str(init.resolve())} if init else {})}
            write_text_atomic(out_dir / "run.json", json.dumps(run_info, indent=1))
            run_log.keep_rows_up_to(ckpt["trainer"]["epoch"] if ckpt else 0)
            run_log.open_tensorboard(trainer, b.optimizer)
            trackers = open_trackers(cfg, trainer, b.optimizer, lambda: state.results, log)
        _announce(log, cfg, b, ckpt)
        with preemption.install():
            trainer.run(b.train_loader, max_epochs=None if ckpt else epochs)
    finally:
        meter.completed()
        for loader in (b.train_loader, *b.eval_loaders.values()):
            loader._iterator = None  # persistent workers end now, not when the trainer's reference cycle is collected
        if run_log is not None:
            run_log.close()
        for tracker in trackers:
            tracker.close()
    if swa is not None and is_main():
        swa.finish(trainer.state.epoch)
    result = _result(trainer.state.epoch, state.state_dict())
    if state.best_score is not None:
        log(f"train: best valid score {state.best_score:.4f} at epoch {state.best_epoch} ({state.stop_reason} "
            f"after epoch {trainer.state.epoch}); checkpoints in {checkpoints.dirname}")
    return result


def _swa(cfg: Config, b: SimpleNamespace, out_dir: Path, meta: dict, log):
    """train.swa_epochs: the running weight average of the last epochs (okkhor.training.average.Swa)."""
    from okkhor.data.dataset import GraphemeDataset
    from okkhor.training.average import Swa

    bn_loader = b.loader(GraphemeDataset(b.data.images, None, b.data.train_idx), batch_size=cfg.eval.batch_size)
    return Swa(b.net, cfg.train.epochs, cfg.train.swa_epochs, bn_loader, out_dir / "checkpoints" / "swa.pt", meta,
               b.device, log)


def write_config(out_dir: Path, cfg: Config, targets: Targets) -> None:
    names = ", ".join(f"{n} ({c} classes, weight {w:g})"
                      for n, c, w in zip(targets.names, targets.num_classes, targets.weights, strict=False))
    write_text_atomic(out_dir / "config.yaml",
                      f"# okkhor train: the resolved config of this run\n# targets: {names}\n" + cfg.to_yaml())


def _announce(log, cfg: Config, b: SimpleNamespace, ckpt) -> None:
    plan, data, iters, world = b.plan, b.data, len(b.train_loader), b.world
    start = ""
    if ckpt:
        done, within = ckpt["trainer"]["epoch"], ckpt["trainer"].get("epoch_iteration", 0)
        start = (f"resuming in epoch {done + 1} after iteration {within}; " if within else
                 f"resuming after epoch {done}; ")
    log(f"train: {start}{len(data.train_idx)} training images, {len(data.valid_idx)} valid, "
        f"{len(data.clean_idx)} train_clean; {cfg.model.name} at {size_text(cfg.data.image_size)} px on "
        f"{b.device.type} (amp {cfg.train.amp}{', channels_last' if cfg.train.channels_last else ''})")
    log(f"train: precision {'fp32' if b.precision.amp == 'off' else b.precision.amp} ({b.precision.amp_reason})"
        f"{'; ' + b.backend_flags if b.backend_flags else ''}")
    log(f"train: effective batch {plan.effective(world)} = batch {plan.batch_size} x accum {plan.accum} x {world} "
        f"process{'es' if world > 1 else ''}; {iters} iterations and {steps_per_epoch(iters, plan.accum)} optimizer "
        "steps per epoch")
