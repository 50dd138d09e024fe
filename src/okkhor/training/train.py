"""The ignite trainer in a few setup steps (run, model, data, step, trainer), then one run of its Engine."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from ignite.engine import Engine
from ignite.handlers import EarlyStopping
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from okkhor.config import Config
from okkhor.data.augment import build_augment
from okkhor.data.dataset import GraphemeDataset
from okkhor.data.sets import EpochBatches, RunData, Source, load_sources, resolve_sources
from okkhor.io import checkpoint
from okkhor.models.graphemes import grapheme_classes, with_grapheme_column
from okkhor.targets import Targets
from okkhor.training.adapters import end_workers
from okkhor.training.average import Swa
from okkhor.training.checkpoints import RunCheckpoints, TrainerState, remove_stale_temps, run_objects
from okkhor.training.distributed import is_main, process_group, rank, resolve_device, shard, sync_buffers, world_size
from okkhor.training.handlers import (
    EpochEnd,
    EpochMeter,
    EpochSeeding,
    Evaluation,
    Preemption,
    RunHandlers,
    RunState,
    StopLine,
    attach_handlers,
    valid_key,
)
from okkhor.training.optim import steps_per_epoch
from okkhor.training.resume import (
    check_resume,
    check_resume_data,
    check_resume_sources,
    check_start,
    open_last,
    resume_point,
    resumed_precision,
)
from okkhor.training.runconfig import (
    check_select_on,
    resolve_targets,
    resolved_config,
    source_records,
    sources_line,
    write_config,
)
from okkhor.training.setup import TrainSetup, build_net, build_training
from okkhor.training.step import BatchPlan, Precision, class_counts, create_evaluator, create_trainer
from okkhor.training.tracking import RunLog, open_trackers
from okkhor.utils.devices import set_backend_flags
from okkhor.utils.files import check_writable, write_text_atomic
from okkhor.utils.sizes import size_text

# A run directory holds:
#   config.yaml          the resolved config (targets listed in its header comment)
#   metrics.csv          epoch,split,source,loss,score,recall_<target>...,lr,seconds; one row per (epoch, split),
#                        split = train | train_clean | valid, and one valid row per data source (its name in
#                        `source`; train_clean is drawn over all sources); `train` is the mean training loss of
#                        the epoch's iterations (no score); seconds = time since the epoch began, when the row's
#                        evaluation (train: the training) finished; lr = the learning rate at the end of the epoch
#   run.json             the data directory the run read (its first source's), and with several sources each one
#   checkpoints/last.pt  every epoch, and mid-epoch on SIGTERM/SIGINT and every train.checkpoint_every iterations;
#                        checkpoints/best.pt when the valid score improves (okkhor.training.checkpoints; the file
#                        format is okkhor.io.checkpoint's)
#   tb/                  TensorBoard events

__all__ = ["train", "run_training"]

Log = Callable[[str], None]
DataDirs = Union[str, Path, Sequence[Union[str, Path]], None]


# ---------------------------------------------------------------------------------------------------- config

def initial_batch_plan(cfg: Config, model: torch.nn.Module, device: torch.device) -> BatchPlan:
    """The micro-batch plan a new run starts with: the config's numbers, or for `train.batch_size: auto` the
    choice of `okkhor.training.memory.choose_batch(model, cfg, device) -> (batch_size, accum)`.

    OOM recovery changes the live plan later (engine.state.batch_plan).
    """
    if cfg.train.batch_size != "auto":
        return BatchPlan(int(cfg.train.batch_size), cfg.train.accum)
    from okkhor.training.memory import choose_batch  # the probes: only when asked for

    batch_size, accum = choose_batch(model, cfg, device)
    return BatchPlan(int(batch_size), int(accum))


# ---------------------------------------------------------------------------------------------------- setup steps

@dataclass
class RunStart:
    """What `setup_run` checked and resolved before any work."""

    sources: list[Source]        # what the run reads, in order (okkhor.data.sets.resolve_sources)
    out_dir: Path
    cfg: Config                  # resolved: targets, loss weights and precision spelled out
    targets: Targets
    precision: Precision
    ckpt: Optional[dict]         # the checkpoint a resumed run continues from; None for a new run
    init: Optional[Path] = None  # --init: the checkpoint whose weights a new run starts from

    @property
    def last(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def data_dir(self) -> Path:
        """The (first) data dir."""
        return self.sources[0].dir

    @property
    def select(self) -> str:
        """The results key of the valid score that picks best.pt (okkhor.training.handlers.RunState)."""
        return valid_key(self.cfg.train.select_on or self.sources[0].name, len(self.sources) > 1)


def setup_run(data_dirs: DataDirs, out_dir: Path, cfg: Config, resume: bool, log: Log,
              init: Optional[Path] = None) -> RunStart:
    """Checks before any work: the run dir, the device, the sources and their targets, the checkpoint to resume
    (or None)."""
    if is_main():
        check_writable(out_dir, "--out", folder=True)
        remove_stale_temps(out_dir / "checkpoints")  # what a save killed midway left
    check_start(out_dir, resume, init)
    device = resolve_device(cfg.train.device)
    sources = resolve_sources(data_dirs, cfg)
    check_select_on(cfg, sources)
    targets, loss_weights = resolve_targets(sources, cfg)
    ckpt = open_last(out_dir, sources[0].dir, resume, log)
    precision = Precision(device, *resumed_precision(cfg, ckpt))
    start = RunStart(sources, out_dir, resolved_config(cfg, targets, loss_weights, precision, sources), targets,
                     precision, ckpt, init)
    if ckpt is not None:
        check_resume_sources(ckpt, sources, start.last)
        check_resume(ckpt, start.cfg, targets, world_size(), start.last)
    return start


@dataclass
class RunModel:
    """The model and what it trains on (`setup_model`)."""

    net: torch.nn.Module
    plan: BatchPlan              # the live micro-batch plan: the step, the sampler and OOM recovery share it
    data: RunData
    labels: np.ndarray           # with the grapheme head, its class is one more label column
    backend_flags: str


def setup_model(start: RunStart, log: Log, show_progress: bool) -> RunModel:
    """Seeds, the model (before the data: a bad model or plan fails fast), the batch plan and the run's data."""
    cfg, device = start.cfg, start.precision.device
    backend_flags = set_backend_flags(device, cfg.train.deterministic)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    graphemes = data = None
    if cfg.model.grapheme_head:  # the head's classes are the label triples of the training images
        data = load_sources(start.sources, cfg, start.targets, log, show_progress)
        graphemes = grapheme_classes(data.labels[data.train_idx])
    net = build_net(cfg.model, start.targets, device, bool(start.precision.channels_last), graphemes, start.init, log)
    plan = (BatchPlan(**checkpoint.run_record(start.ckpt)["batch"]) if start.ckpt
            else initial_batch_plan(cfg, net, device))
    data = data or load_sources(start.sources, cfg, start.targets, log, show_progress)
    if start.ckpt is not None:
        check_resume_data(start.ckpt, data.sources, start.last)
    labels = data.labels if graphemes is None else with_grapheme_column(data.labels, graphemes)
    return RunModel(net, plan, data, labels, backend_flags)


@dataclass
class RunLoaders:
    """The run's data loaders (`setup_data`)."""

    train: DataLoader
    batches: EpochBatches                  # the train loader's batch sampler: epoch, resume point
    generator: torch.Generator             # the train loader's generator, reseeded every epoch
    evals: dict[str, DataLoader]           # train_clean and valid (one per source): this process's share
    make: Callable[..., DataLoader]        # the factory behind them (the SWA batch-norm pass uses it too)


def setup_data(start: RunStart, model: RunModel) -> RunLoaders:
    """The seeded training loader and the evaluation loaders: workers send uint8 batches (pinned for CUDA), the
    device scales them (Precision.images)."""
    cfg, device, data, rank_, world = start.cfg, start.precision.device, model.data, rank(), world_size()

    def make(dataset, **kw) -> DataLoader:
        kw.setdefault("generator", torch.Generator().manual_seed(0))
        if cfg.data.workers:
            kw.update(persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor)
        return DataLoader(dataset, shuffle=False, num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                          **kw)

    train_set = GraphemeDataset(data.images, model.labels, data.train_idx,
                                augment=build_augment(cfg.aug, cfg.data.image_size), seed=cfg.seed)
    batches = EpochBatches([part.train for part in data.sources], model.plan, cfg.seed, rank_, world,
                           shares=[part.source.share for part in data.sources], epoch_size=cfg.data.epoch_size)
    generator = torch.Generator()
    several = len(data.sources) > 1
    splits = [("train_clean", data.clean_idx),
              *[(valid_key(part.source.name, several), part.valid_idx) for part in data.sources]]
    evals = {split: make(GraphemeDataset(data.images, model.labels, shard(idx, rank_, world)),
                         batch_size=cfg.eval.batch_size) for split, idx in splits if len(idx)}
    return RunLoaders(make(train_set, batch_sampler=batches, generator=generator), batches, generator, evals, make)


def setup_step(start: RunStart, model: RunModel, loaders: RunLoaders, log: Log) -> TrainSetup:
    """The training step (okkhor.training.setup): the model wrapped in DDP with several processes (plain DDP rather
    than idist.auto_model, which moves the model to a GPU even for train.device=cpu) and compiled when asked."""
    device, world = start.precision.device, world_size()

    def wrap(net: torch.nn.Module) -> torch.nn.Module:
        if world > 1:
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(net) if start.cfg.train.compile else net

    return build_training(model.net, start.cfg, start.targets, start.precision, model.plan, len(loaders.train),
                          wrap=wrap, log=log)


@dataclass
class Run:
    """A wired run (`setup_trainer`): the trainer Engine with every handler attached, ready to start."""

    trainer: Engine
    state: RunState
    handlers: RunHandlers
    checkpoints: RunCheckpoints
    run_log: Optional[RunLog]    # the first process's metrics.csv and TensorBoard; None on the others
    parts: TrainSetup
    swa: Optional[Swa] = None


def setup_trainer(start: RunStart, model: RunModel, loaders: RunLoaders, parts: TrainSetup, log: Log,
                  show_progress: bool) -> Run:
    """The trainer and evaluator Engines, the handler objects, the checkpoints of every stateful object."""
    cfg, targets, epochs, world = start.cfg, start.targets, start.cfg.train.epochs, world_size()
    trainer = create_trainer(parts.step)
    state = RunState(model.plan, epochs, select=start.select)
    meter = EpochMeter(epochs, show_progress)
    eval_model = parts.eval_model
    evaluator = create_evaluator(eval_model, targets, parts.loss.weights, start.precision)
    evaluation = Evaluation({split: (evaluator, eval_model, loader) for split, loader in loaders.evals.items()},
                            state, then=parts.schedule.step_epoch)
    early_stopping = EarlyStopping(cfg.train.patience, state.valid_score, trainer) if cfg.train.patience else None
    data = checkpoint.data_record(model.data.fingerprint, start.data_dir, source_records(model.data))
    meta = checkpoint.meta_record(cfg.to_dict(), targets.to_dict(),
                                  class_counts(model.data.labels[model.data.train_idx], targets), data)
    swa = _swa(start, model, loaders, meta, log) if cfg.train.swa_epochs else None
    position = TrainerState(trainer, parts.step, lambda: len(loaders.train), epochs, loaders.batches, world)
    objects = run_objects(net=parts.net, ema=parts.ema.module if parts.ema is not None else None,
                          optimizer=parts.optimizer, schedule=parts.schedule, scaler=start.precision.scaler,
                          mixer=parts.mixer, trainer=position, state=state, early_stopping=early_stopping,
                          meter=meter, swa=swa)
    checkpoints = RunCheckpoints(start.out_dir / "checkpoints", objects, meta, state.valid_score,
                                 keep_top=cfg.train.keep_top)
    run_log = RunLog(start.out_dir, targets, [s.name for s in start.sources]) if is_main() else None
    again = f"okkhor train {' '.join(f'--data {s.dir}' for s in start.sources)} --out {start.out_dir} --resume" + (
        " (under the same torchrun launch)" if world > 1 else "")
    handlers = RunHandlers(
        plan=model.plan, oom=parts.oom, meter=meter, evaluation=evaluation, early_stopping=early_stopping,
        state=state, swa=swa, stop_line=StopLine(checkpoints.last_path),
        seeding=EpochSeeding(loaders.batches, loaders.generator, cfg.seed, lambda: len(loaders.train)),
        sync_buffers=lambda engine: sync_buffers(parts.net, eval_model),
        epoch_end=EpochEnd(run_log, checkpoints, meter, evaluation, state, parts.optimizer, targets, epochs, log),
        preemption=Preemption(checkpoints.save_last, checkpoints.last_path, lambda: parts.step.at_step_boundary,
                              cfg.train.checkpoint_every, world, again if is_main() else ""))
    attach_handlers(trainer, handlers)
    return Run(trainer, state, handlers, checkpoints, run_log, parts, swa)


def _swa(start: RunStart, model: RunModel, loaders: RunLoaders, meta: dict, log: Log) -> Swa:
    """train.swa_epochs: the running weight average of the last epochs (okkhor.training.average.Swa)."""
    cfg, data = start.cfg, model.data
    bn_loader = loaders.make(GraphemeDataset(data.images, None, data.train_idx), batch_size=cfg.eval.batch_size)
    return Swa(model.net, cfg.train.epochs, cfg.train.swa_epochs, bn_loader, start.out_dir / "checkpoints" / "swa.pt",
               meta, start.precision.device, log)


def setup_outputs(start: RunStart, run: Run, log: Log) -> list:
    """The first process's files before the first epoch: config.yaml, run.json, metrics.csv (a resumed run keeps
    the rows its checkpoint covers), TensorBoard, and the trackers the config names (returned, to close)."""
    cfg, out_dir, init = start.cfg, start.out_dir, start.init
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, cfg, start.targets)
    run_info = {"data_dir": str(start.data_dir.resolve()), **({"init": str(init.resolve())} if init else {})}
    if len(start.sources) > 1:
        run_info["sources"] = [{"name": s.name, "dir": str(s.dir.resolve()), "share": s.share} for s in start.sources]
    write_text_atomic(out_dir / "run.json", json.dumps(run_info, indent=1))
    run.run_log.keep_rows_up_to(checkpoint.finished_epochs(start.ckpt) if start.ckpt else 0)
    run.run_log.open_tensorboard(run.trainer, run.parts.optimizer)
    return open_trackers(cfg, run.trainer, run.parts.optimizer, lambda: run.state.results, log)


# ---------------------------------------------------------------------------------------------------- the run

def train(data_dir: DataDirs, out_dir: str | Path, cfg: Config, resume: bool = False, *,
          show_progress: bool = True, log: Log = print, init: str | Path | None = None) -> dict:
    """Train a model on DATA_DIR's training fold and write the run directory OUT_DIR; returns the final metrics.

    DATA_DIR may be several data dirs (sources; None: data.sources): the run trains on all their training folds,
    each drawn by its share (okkhor.data.sets.EpochBatches), and validates on each one's validation fold.

    resume: continue exactly from OUT_DIR/checkpoints/last.pt (the config must match the checkpoint's, except
      okkhor.training.resume.RESUMABLE_KEYS). init: start a new run from this checkpoint's weights
      (okkhor.training.finetune.init_from).
    Under torchrun, every process calls this; the first one alone writes files and prints.
    Returns {"epoch", "best_score", "best_epoch", "stop_reason", "valid": {...}, "train_clean": {...}}; with
    several sources also "valid/<source>": {...} for each ("valid" is then train.select_on's).
    """
    return run_training(data_dir, out_dir, cfg, resume, show_progress=show_progress, log=log, init=init)


def run_training(data_dir: DataDirs, out_dir: str | Path, cfg: Config, resume: bool = False, *,
                 show_progress: bool = True, log: Log = print, init: str | Path | None = None,
                 extend: Optional[Callable[[Run], None]] = None) -> dict:
    """`train`, with `extend(run)` called on the wired run before it starts: the seam of okkhor.training.testing."""
    with process_group(cfg.train.device):
        main = is_main()
        log = log if main else (lambda message: None)
        return _run(data_dir, Path(out_dir), cfg, resume, show_progress and main, log,
                    Path(init) if init is not None else None, extend)


def _result(epoch: int, state: dict, select: str) -> dict:
    metrics = state["metrics"]
    return {"epoch": epoch, "best_score": state["best_score"], "best_epoch": state["best_epoch"],
            "stop_reason": state["stop_reason"], **metrics, **({"valid": metrics[select]} if select in metrics else {})}


def _run(data_dir: DataDirs, out_dir: Path, cfg: Config, resume: bool, show_progress: bool, log: Log,
         init: Optional[Path], extend: Optional[Callable[[Run], None]]) -> dict:
    start = setup_run(data_dir, out_dir, cfg, resume, log, init)
    ckpt, epochs = start.ckpt, start.cfg.train.epochs
    if ckpt is not None and checkpoint.is_finished(ckpt, epochs):
        done = checkpoint.finished_epochs(ckpt)
        log(f"train: {start.last} has finished ({checkpoint.stop_reason(ckpt)} after epoch {done}); nothing to do "
            "(with a schedule not laid out over train.epochs, raise it to train on)")
        return _result(done, checkpoint.run_record(ckpt), start.select)
    model = setup_model(start, log, show_progress)
    loaders = setup_data(start, model)
    parts = setup_step(start, model, loaders, log)
    run = setup_trainer(start, model, loaders, parts, log, show_progress)
    if extend is not None:
        extend(run)
    if ckpt is not None:
        run.checkpoints.resume(ckpt, checkpoint.run_record(ckpt)["best_score"])
    trackers: list = []   # W&B / MLflow (okkhor.training.tracking), when the config names them
    try:
        if run.run_log is not None:
            trackers = setup_outputs(start, run, log)
        _announce(log, start, model, loaders.batches, len(loaders.train))
        with run.handlers.preemption.install():
            run.trainer.run(loaders.train, max_epochs=None if ckpt else epochs)
    finally:
        run.handlers.meter.completed()
        for loader in (loaders.train, *loaders.evals.values()):
            end_workers(loader)  # persistent workers end now, not when the trainer's reference cycle is collected
        if run.run_log is not None:
            run.run_log.close()
        for tracker in trackers:
            tracker.close()
    if run.swa is not None and is_main():
        run.swa.finish(run.trainer.state.epoch)
    state = run.state
    if state.best_score is not None:
        log(f"train: best valid score {state.best_score:.4f} at epoch {state.best_epoch} ({state.stop_reason} "
            f"after epoch {run.trainer.state.epoch}); checkpoints in {run.checkpoints.dirname}")
    return _result(run.trainer.state.epoch, state.state_dict(), start.select)


def _announce(log: Log, start: RunStart, model: RunModel, batches: EpochBatches, iters: int) -> None:
    cfg, plan, data, precision, world = start.cfg, model.plan, model.data, start.precision, world_size()
    log(f"train: {resume_point(start.ckpt)}{len(data.train_idx)} training images, {len(data.valid_idx)} valid, "
        f"{len(data.clean_idx)} train_clean; {cfg.model.name} at {size_text(cfg.data.image_size)} px on "
        f"{precision.device.type} (amp {cfg.train.amp}{', channels_last' if cfg.train.channels_last else ''})")
    if len(data.sources) > 1:
        log(sources_line(data, batches, cfg.train.select_on))
    log(f"train: precision {'fp32' if precision.amp == 'off' else precision.amp} ({precision.amp_reason})"
        f"{'; ' + model.backend_flags if model.backend_flags else ''}")
    log(f"train: effective batch {plan.effective(world)} = batch {plan.batch_size} x accum {plan.accum} x {world} "
        f"process{'es' if world > 1 else ''}; {iters} iterations and {steps_per_epoch(iters, plan.accum)} optimizer "
        "steps per epoch")
