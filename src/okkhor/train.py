"""The ignite trainer: data, model, optimizer and schedule wired into an Engine; evaluation, checkpoints, resume.

A run directory holds:
  config.yaml                 the resolved config (targets listed in its header comment)
  metrics.csv                 epoch,split,loss,score,recall_<target>...,lr,seconds; one row per (epoch, split),
                              split = train | train_clean | valid; `train` is the mean training loss of the
                              epoch's iterations (no score); seconds = time since the epoch began, when the row's
                              evaluation (train: the training) finished; lr = the learning rate at the end of the epoch
  checkpoints/last.pt         every epoch; checkpoints/best.pt when the valid score improves
  tb/                         TensorBoard events
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from okkhor.checkpoint import copy_checkpoint, load_training_checkpoint, rng_state, save_checkpoint, set_rng_state
from okkhor.config import Config
from okkhor.distributed import barrier, broadcast_error, is_main, pick_device, process_group, rank, shard, world_size
from okkhor.engine import BatchPlan, NonFiniteLoss, TrainStep, check_amp, class_counts, evaluate
from okkhor.optim import SCHEDULES, build_optimizer, build_scheduler, steps_per_epoch
from okkhor.errors import OkkhorError
from okkhor.fsutil import atomic_path, write_text_atomic
from okkhor.oom import FaultInjector, OomRecovery
from okkhor.targets import Targets

SPLITS = ("train_clean", "valid")
# config keys a resumed run may change; everything else must match the checkpoint
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.device", "train.compile", "train.oom_at",
                  "train.batch_size", "train.accum", "train.effective_batch", "data.workers", "eval.batch_size")


def metrics_columns(targets: Targets) -> list[str]:
    return ["epoch", "split", "loss", "score", *[f"recall_{n}" for n in targets.names], "lr", "seconds"]


# ---------------------------------------------------------------------------------------------------- data

@dataclass
class RunData:
    """The prepared training images (memory-mapped) with labels, and the index sets of one run."""

    images: np.ndarray
    labels: np.ndarray       # int64 [n, T], aligned to the cache's image order
    train_idx: np.ndarray    # training fold (after data.limit)
    valid_idx: np.ndarray    # validation fold
    clean_idx: np.ndarray    # fixed clean subset of the training fold evaluated every epoch


def _ensure_cache_and_folds(data_dir: Path, cfg: Config, targets: Targets, log: Callable[[str], None],
                            show_progress: bool) -> Path:
    """Make the prepare cache and folds.csv when missing, with the same code as `okkhor prepare` / `okkhor split`."""
    from okkhor.data.folds import split
    from okkhor.data.kaggle import image_parquet_files
    from okkhor.data.prepare import PrepareOptions, cache_paths, default_cache_dir, prepare_split

    opts = PrepareOptions(size=cfg.data.image_size, crop=cfg.data.crop)
    cache_dir = default_cache_dir(data_dir, opts)
    if image_parquet_files(data_dir, "train"):
        npy, reused = prepare_split(data_dir, "train", opts, cache_dir, show_progress=show_progress)
        if not reused:
            log(f"train: prepared the training images at {opts.size} px (crop={opts.crop}) into {cache_dir}")
    elif not cache_paths(cache_dir, "train")[0].is_file():
        raise OkkhorError(f"{data_dir}: no train_image_data_*.parquet files and no prepared cache {cache_dir}")
    folds = data_dir / "folds.csv"
    if not folds.is_file():
        split(data_dir, targets, folds=cfg.data.folds, seed=cfg.seed)
        log(f"train: wrote {folds} ({cfg.data.folds} folds, seed {cfg.seed}), as `okkhor split` would")
    return cache_dir


def load_run_data(data_dir: str | Path, cfg: Config, targets: Targets, log: Callable[[str], None] = print,
                  show_progress: bool = True) -> RunData:
    """Images, labels, folds and index sets of a run; the first process makes a missing cache or folds file."""
    from okkhor.data.folds import read_folds, stratified_subset
    from okkhor.data.kaggle import read_train_labels
    from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    error = None
    if is_main():
        try:
            _ensure_cache_and_folds(data_dir, cfg, targets, log, show_progress)
        except OkkhorError as exc:
            error = str(exc)
    error = broadcast_error(error)
    if error:
        raise OkkhorError(error)
    images, ids = load_cache(default_cache_dir(data_dir, PrepareOptions(cfg.data.image_size, cfg.data.crop)), "train")
    csv = data_dir / "train.csv"
    df, csv_labels = read_train_labels(csv, targets)
    rows = pd.Index(df["image_id"].astype(str)).get_indexer(ids)
    if (rows < 0).any():
        raise OkkhorError(f"{csv}: no labels for cached image {ids[int(np.flatnonzero(rows < 0)[0])]}; "
                          "the cache is stale: delete it and rerun")
    labels = csv_labels[rows]
    folds_path = data_dir / "folds.csv"
    folds = read_folds(folds_path, ids)
    n_folds = int(folds.max()) + 1
    if n_folds != cfg.data.folds:
        raise OkkhorError(f"{folds_path}: has {n_folds} folds but data.folds={cfg.data.folds}; set data.folds="
                          f"{n_folds} or rerun `okkhor split --folds {cfg.data.folds}`")
    valid_idx = np.flatnonzero(folds == cfg.data.fold)
    train_idx = np.flatnonzero(folds != cfg.data.fold)
    if len(valid_idx) == 0 or len(train_idx) == 0:
        raise OkkhorError(f"{folds_path}: fold {cfg.data.fold} leaves no {'validation' if not len(valid_idx) else 'training'}"
                          " images")
    if cfg.data.limit:
        train_idx = train_idx[stratified_subset(labels[train_idx], targets, cfg.data.limit, cfg.seed)]
    n_clean = min(cfg.eval.train_clean_size, len(train_idx))
    clean_idx = np.sort(np.random.default_rng(cfg.seed).choice(train_idx, n_clean, replace=False))
    return RunData(images, labels, train_idx, valid_idx, clean_idx)


class EpochBatches(Sampler):
    """One process's micro-batches of one epoch (a batch sampler).

    The epoch's order is a permutation seeded by (seed, epoch) alone, so it is the same with any number of
    workers and after a resume. With several processes each takes every world-th sample (the permutation is
    wrapped around so all get the same count). Batches have `plan.batch_size` samples, read when the epoch's
    iteration starts; a last batch of a single sample joins the one before it (batch norm cannot train on one).
    """

    def __init__(self, n: int, plan: BatchPlan, seed: int, rank_: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 <= rank_ < world:
            raise ValueError(f"rank {rank_} is not in 0..{world - 1}")
        self.n, self.plan, self.seed, self.rank, self.world = n, plan, seed, rank_, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _share(self) -> int:
        return math.ceil(self.n / self.world)

    def __len__(self) -> int:
        share, size = self._share(), self.plan.batch_size
        count = math.ceil(share / size)
        return count - 1 if count > 1 and share % size == 1 else count

    def __iter__(self):
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, 0x5A3D]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        order = np.resize(torch.randperm(self.n, generator=generator).numpy(), self._share() * self.world)
        mine = order[self.rank::self.world].tolist()
        size, count = self.plan.batch_size, len(self)
        for b in range(count):
            yield mine[b * size:] if b == count - 1 else mine[b * size:(b + 1) * size]


# ---------------------------------------------------------------------------------------------------- config

def resolve_targets(data_dir: str | Path, cfg: Config) -> tuple[Targets, list[float]]:
    """The run's targets (metric weights from the class map) and its loss weights."""
    from okkhor.data.kaggle import load_targets

    targets = load_targets(data_dir, cfg.data.class_map, cfg.data.targets)
    weights = list(cfg.train.loss_weights) or list(targets.weights)
    if len(weights) != len(targets):
        raise OkkhorError(f"config: train.loss_weights has {len(weights)} values for {len(targets)} targets "
                          f"({', '.join(targets.names)})")
    return targets, weights


def resolved_config(cfg: Config, targets: Targets, loss_weights: list[float]) -> Config:
    """The config with the target list and loss weights spelled out."""
    out = copy.deepcopy(cfg)
    out.data.targets = list(targets.names)
    out.train.loss_weights = [float(w) for w in loss_weights]
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
    old, new = _flatten(saved), _flatten(cfg.to_dict())
    changed = [k for k in new if old.get(k) != new[k] and k not in RESUMABLE_KEYS]
    if changed:
        detail = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:6])
        raise OkkhorError(f"--resume: {path} was trained with a different config: {detail}; only "
                          f"{', '.join(RESUMABLE_KEYS)} may change")
    if old["train.epochs"] != new["train.epochs"] and SCHEDULES[cfg.train.schedule].fixed_length:
        raise OkkhorError(f"--resume: train.epochs changed ({old['train.epochs']} -> {new['train.epochs']}) but "
                          f"the {cfg.train.schedule} learning-rate schedule is laid out over the run's length; "
                          "resume with the same train.epochs, or start a new run")


def initial_batch_plan(cfg: Config, model: torch.nn.Module, device: torch.device) -> BatchPlan:
    """The micro-batch plan a new run starts with: the config's numbers, or for `train.batch_size: auto` the
    choice of `okkhor.memory.choose_batch(model, cfg, device) -> (batch_size, accum)`.

    This is the hook for batch-size probing; OOM recovery changes the live plan (engine.state.batch_plan).
    """
    if cfg.train.batch_size != "auto":
        return BatchPlan(int(cfg.train.batch_size), cfg.train.accum)
    import importlib

    try:
        memory = importlib.import_module("okkhor.memory")
    except ModuleNotFoundError as exc:
        if exc.name != "okkhor.memory":
            raise
        memory = None
    choose = getattr(memory, "choose_batch", None)
    if choose is None:
        raise OkkhorError("train.batch_size=auto needs okkhor.memory (batch-size probing), which this version "
                          "lacks; set train.batch_size to a number")
    batch_size, accum = choose(model, cfg, device)
    return BatchPlan(int(batch_size), int(accum))


# ---------------------------------------------------------------------------------------------------- output

class RunLog:
    """Rank 0's outputs: config.yaml, metrics.csv (rewritten atomically each epoch), TensorBoard, summary lines."""

    def __init__(self, out_dir: Path, targets: Targets, log: Callable[[str], None]):
        self.out_dir, self.targets, self.log = out_dir, targets, log
        self.columns = metrics_columns(targets)
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.tb = None

    def write_config(self, cfg: Config) -> None:
        names = ", ".join(f"{n} ({c} classes, weight {w:g})"
                          for n, c, w in zip(self.targets.names, self.targets.num_classes, self.targets.weights))
        write_text_atomic(self.out_dir / "config.yaml",
                          f"# okkhor train: the resolved config of this run\n# targets: {names}\n" + cfg.to_yaml())

    def keep_rows_up_to(self, epoch: int) -> None:
        """On resume: the rows of the epochs the checkpoint covers (a crash may have left one more)."""
        if self.path.is_file():
            df = pd.read_csv(self.path)
            self.rows = df[df["epoch"] <= epoch].to_dict("records")
        self._write()

    def add(self, epoch: int, split: str, result: dict, lr: float, seconds: float) -> None:
        self.rows.append({"epoch": epoch, "split": split, **{k: result.get(k) for k in self.columns[2:-2]},
                          "lr": lr, "seconds": round(seconds, 3)})
        if self.tb is not None:
            for key in ("loss", "score", *[f"recall_{n}" for n in self.targets.names]):
                if key in result:
                    self.tb.writer.add_scalar(f"{split}/{key}", result[key], epoch)

    def _write(self) -> None:
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows, columns=self.columns).to_csv(tmp, index=False)

    def flush(self) -> None:
        self._write()
        if self.tb is not None:
            self.tb.writer.flush()

    def open_tensorboard(self, trainer, optimizer) -> None:
        from ignite.engine import Events
        from ignite.handlers import TensorboardLogger

        self.tb = TensorboardLogger(log_dir=str(self.out_dir / "tb"))
        self.tb.attach_output_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=10), tag="train",
                                      output_transform=lambda out: {"loss": out["loss"]})
        self.tb.attach_opt_params_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=10),
                                          optimizer=optimizer)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def summary_line(epoch: int, epochs: int, train_loss: float, results: dict, lr: float, images_per_s: float,
                 seconds: float, best: bool, targets: Targets) -> str:
    valid = results["valid"]
    recalls = " ".join(f"{n} {valid[f'recall_{n}']:.4f}" for n in targets.names)
    clean = f"  train_clean {results['train_clean']['score']:.4f}" if "train_clean" in results else ""
    return (f"epoch {epoch}/{epochs}  loss {train_loss:.4f}  valid {valid['score']:.4f} (loss {valid['loss']:.4f}; "
            f"{recalls}){clean}  lr {lr:.2e}  {images_per_s:.0f} img/s  {seconds:.0f}s{'  *best' if best else ''}")


# ---------------------------------------------------------------------------------------------------- the run

def train(data_dir: str | Path, out_dir: str | Path, cfg: Config, resume: bool = False, *,
          show_progress: bool = True, log: Callable[[str], None] = print, stop_after: int = 0) -> dict:
    """Train a model on DATA_DIR's training fold and write the run directory OUT_DIR; returns the final metrics.

    resume: continue exactly from OUT_DIR/checkpoints/last.pt (the config must match the checkpoint's, except
      RESUMABLE_KEYS). stop_after: stop after that epoch as if interrupted (0: run all train.epochs).
    Under torchrun, every process calls this; the first one alone writes files and prints.
    Returns {"epoch", "best_score", "best_epoch", "stop_reason", "valid": {...}, "train_clean": {...}}.
    """
    with process_group(cfg.train.device):
        return _Run(Path(data_dir), Path(out_dir), cfg, resume, show_progress, log, stop_after).run()


class _Run:
    """One training run: built in __init__, executed by run()."""

    def __init__(self, data_dir: Path, out_dir: Path, cfg: Config, resume: bool, show_progress: bool,
                 log: Callable[[str], None], stop_after: int):
        self.main = is_main()
        self.log = log if self.main else (lambda message: None)
        self.show_progress = show_progress and self.main
        self.out_dir, self.stop_after, self.data_dir = out_dir, stop_after, data_dir
        self.last_path = out_dir / "checkpoints" / "last.pt"
        self.best_path = out_dir / "checkpoints" / "best.pt"
        if resume and not self.last_path.is_file():
            raise OkkhorError(f"--resume: {self.last_path} not found; nothing to resume")
        if not resume and self.last_path.is_file():
            raise OkkhorError(f"{out_dir}: already holds a run ({self.last_path}); pass --resume to continue it "
                              "or choose another --out")
        self.device = pick_device(cfg.train.device)
        check_amp(self.device, cfg.train.amp)
        self.targets, self.loss_weights = resolve_targets(data_dir, cfg)
        self.cfg = resolved_config(cfg, self.targets, self.loss_weights)
        self.ckpt = load_training_checkpoint(self.last_path) if resume else None
        if self.ckpt is not None:
            check_resume_config(self.ckpt["config"], self.cfg, self.last_path)
            if self.ckpt["targets"] != self.targets.to_dict():
                raise OkkhorError(f"--resume: {self.last_path} was trained on other targets "
                                  f"({self.ckpt['targets']['names']})")
        self.rank, self.world = rank(), world_size()
        self._build_model()  # before the data: a bad model, unreachable weights or batch plan fail fast
        self.data = load_run_data(data_dir, self.cfg, self.targets, self.log, self.show_progress)
        self._build()

    # ---- construction
    def _build_model(self) -> None:
        import random

        from okkhor.model import build_model

        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.net = build_model(self.cfg.model, self.targets)
        memory_format = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        self.net.to(self.device, memory_format=memory_format)
        self.plan = BatchPlan(**self.ckpt["batch"]) if self.ckpt else initial_batch_plan(self.cfg, self.net,
                                                                                         self.device)

    def _build(self) -> None:
        from okkhor.data.augment import build_augment
        from okkhor.data.dataset import GraphemeDataset
        from okkhor.mixing import Mixer

        cfg, tcfg = self.cfg, self.cfg.train
        self.ema = None
        if tcfg.ema > 0:
            from timm.utils import ModelEmaV3

            # warmup: the averaging horizon grows with the step count up to 1/(1-ema), so short runs work too
            self.ema = ModelEmaV3(self.net, decay=tcfg.ema, use_warmup=True)
        model: torch.nn.Module = self.net
        if self.world > 1:
            # plain DDP rather than idist.auto_model: that one moves the model to a GPU even for train.device=cpu
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None)
        if tcfg.compile:
            model = torch.compile(model)
        self.model = model
        self.optimizer = build_optimizer(self.net, tcfg)

        data = self.data
        self.train_set = GraphemeDataset(data.images, data.labels, data.train_idx,
                                         augment=build_augment(cfg.aug, cfg.data.image_size), seed=cfg.seed)
        self.batches = EpochBatches(len(self.train_set), self.plan, cfg.seed, self.rank, self.world)
        self.loader_generator = torch.Generator()
        self.train_loader = self._loader(self.train_set, batch_sampler=self.batches, generator=self.loader_generator)
        self.eval_loaders = {}
        for split, idx in (("train_clean", data.clean_idx), ("valid", data.valid_idx)):
            if len(idx):
                dataset = GraphemeDataset(data.images, data.labels, shard(idx, self.rank, self.world))
                self.eval_loaders[split] = self._loader(dataset, batch_size=cfg.eval.batch_size)
        self.scheduler = build_scheduler(self.optimizer, tcfg, len(self.train_loader), self.plan.accum)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.amp == "fp16")
        self.mixer = Mixer(cfg.mix, seed=cfg.seed + self.rank)  # each process mixes its own batch its own way
        # out-of-memory recovery: redo a failed micro-batch in chunks; the plan shrinks at the epoch's end
        self.oom = OomRecovery(self.plan, self.net, log=self.log,
                               injector=FaultInjector(tcfg.oom_at) if tcfg.oom_at != -1 else None)
        self.step = TrainStep(self.model, self.optimizer, self.plan, self.loss_weights, mixer=self.mixer,
                              scheduler=self.scheduler, scaler=self.scaler, runner=self.oom,
                              amp=tcfg.amp, device=self.device, channels_last=tcfg.channels_last,
                              clip_grad=tcfg.clip_grad, ema=self.ema, ema_source=self.net,
                              label_smoothing=tcfg.label_smoothing, ohem=tcfg.ohem, world_size=self.world)
        self.train_class_counts = class_counts(data.labels[data.train_idx], self.targets)
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.last_results: dict[str, dict] = {}
        self.finished = False
        self.stop_reason = "running"

    def _loader(self, dataset, batch_sampler=None, batch_size=None, generator=None) -> DataLoader:
        workers = self.cfg.data.workers
        return DataLoader(dataset, batch_sampler=batch_sampler, batch_size=batch_size if batch_sampler is None else 1,
                          shuffle=False, num_workers=workers, pin_memory=self.device.type == "cuda",
                          generator=generator or torch.Generator().manual_seed(0))

    def _engine(self):
        from ignite.engine import Engine, Events
        from ignite.handlers import EarlyStopping

        trainer = Engine(self.step)
        # errors reach the user through OkkhorError / the CLI; keep ignite from logging them a second time
        trainer.logger = logging.getLogger("okkhor.trainer")
        trainer.logger.addHandler(logging.NullHandler())
        trainer.logger.propagate = False
        self.step.attach(trainer)
        self.oom.attach(trainer)  # before _on_epoch_completed, which checkpoints the plan
        trainer.add_event_handler(Events.STARTED, self._on_started)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        self.early_stopping = None
        if self.cfg.train.patience:
            self.early_stopping = EarlyStopping(self.cfg.train.patience, lambda engine: self._valid_score(),
                                                trainer=trainer)
        return trainer

    def _valid_score(self) -> float:
        return self.last_results["valid"]["score"]

    # ---- checkpoints
    def _process_states(self) -> list[dict[str, Any]]:
        """The random states of every process (rank order): global generators and the mixer's."""
        mine = {"rng": rng_state(), "mixer": self.mixer.state_dict()}
        if self.world == 1:
            return [mine]
        import ignite.distributed as idist

        return idist.all_gather(mine)

    def _state(self, trainer, processes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "trainer": {"epoch": trainer.state.epoch, "iteration": trainer.state.iteration,
                        "epoch_length": trainer.state.epoch_length, **self.step.state_dict()},
            "mixer": processes[0]["mixer"],
            "rng": processes[0]["rng"],
            "processes": processes if len(processes) > 1 else None,  # every rank's, to resume each exactly
            "config": self.cfg.to_dict(),
            "targets": self.targets.to_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "train_class_counts": self.train_class_counts,
            "batch": self.plan.state_dict(),
            "metrics": self.last_results,
            "finished": self.finished,
            "stop_reason": self.stop_reason,
        }

    def _restore(self, trainer) -> None:
        ckpt = self.ckpt
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
        self.step.load_state_dict(ckpt["trainer"])
        processes = ckpt.get("processes") or []
        own = processes[self.rank] if len(processes) == self.world else {"rng": ckpt["rng"], "mixer": ckpt["mixer"]}
        self.mixer.load_state_dict(own["mixer"])
        self.best_score, self.best_epoch = ckpt["best_score"], ckpt.get("best_epoch", 0)
        self.last_results = ckpt["metrics"]
        if self.early_stopping is not None and ckpt["early_stopping"] is not None:
            self.early_stopping.load_state_dict(ckpt["early_stopping"])
        trainer.load_state_dict({"epoch": ckpt["trainer"]["epoch"], "max_epochs": self.cfg.train.epochs,
                                 "epoch_length": len(self.train_loader)})
        set_rng_state(own["rng"])

    # ---- event handlers
    def _on_started(self, trainer) -> None:
        trainer.state.batch_plan = self.plan

    def _on_epoch_started(self, trainer) -> None:
        epoch = trainer.state.epoch
        self.train_set.set_epoch(epoch)
        self.batches.set_epoch(epoch)
        self.loader_generator.manual_seed(self.cfg.seed * 100003 + epoch)
        trainer.state.epoch_length = len(self.train_loader)  # the plan may have changed between epochs
        self.epoch_start = time.time()
        self.epoch_images, self.epoch_loss_sum, self.epoch_iters = 0, 0.0, 0
        self.bar = None
        if self.show_progress:
            from okkhor.progress import progress

            self.bar = progress(total=trainer.state.epoch_length, desc=f"epoch {epoch}/{self.cfg.train.epochs}",
                                unit="batch", leave=False)

    def _on_iteration(self, trainer) -> None:
        out = trainer.state.output
        self.epoch_images += out["images"]
        self.epoch_loss_sum += out["loss"]
        self.epoch_iters += 1
        if self.bar is not None:
            rate = self.epoch_images / max(time.time() - self.epoch_start, 1e-9)
            self.bar.set_postfix(loss=f"{self.epoch_loss_sum / self.epoch_iters:.4f}", lr=f"{out['lr']:.2e}",
                                 img_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)

    def _close_bar(self) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()
            self.bar = None

    def _on_epoch_completed(self, trainer) -> None:
        epoch, epochs = trainer.state.epoch, self.cfg.train.epochs
        train_seconds = time.time() - self.epoch_start
        self._close_bar()
        eval_model = self.ema.module if self.ema is not None else self.net
        lr = float(self.optimizer.param_groups[0]["lr"])
        train_loss = self.epoch_loss_sum / max(self.epoch_iters, 1)
        if self.main:
            self.run_log.add(epoch, "train", {"loss": train_loss}, lr, train_seconds)
        results: dict[str, dict] = {}
        for split, loader in self.eval_loaders.items():
            results[split] = evaluate(eval_model, loader, self.targets, self.loss_weights, self.device,
                                      self.cfg.train.amp, self.cfg.train.channels_last)
            if self.main:
                self.run_log.add(epoch, split, results[split], lr, time.time() - self.epoch_start)
        self.last_results = results
        improved = self.best_score is None or results["valid"]["score"] > self.best_score
        if improved:
            self.best_score, self.best_epoch = results["valid"]["score"], epoch
        self.scheduler.step_epoch(results["valid"]["score"])
        if self.early_stopping is not None:
            self.early_stopping(trainer)  # calls trainer.terminate() when patience runs out
        if trainer.should_terminate:
            self.finished, self.stop_reason = True, "early_stopping"
        elif epoch >= epochs:
            self.finished, self.stop_reason = True, "completed"
        elif self.stop_after and epoch >= self.stop_after:
            self.stop_reason = "stop_after"
        processes = self._process_states()
        if self.main:
            self.run_log.flush()  # metrics first: a crash before the checkpoint only costs a rerun of this epoch
            save_checkpoint(self.last_path, self._state(trainer, processes))
            if improved:
                copy_checkpoint(self.last_path, self.best_path)
            self.log(summary_line(epoch, epochs, train_loss, results, lr,
                                  self.epoch_images / max(train_seconds, 1e-9), time.time() - self.epoch_start,
                                  improved, self.targets))
        barrier()
        if self.stop_reason != "running":
            trainer.terminate()

    # ---- the run
    def _result(self) -> dict:
        return {"epoch": self._epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "stop_reason": self.stop_reason, **self.last_results}

    def run(self) -> dict:
        trainer = self._engine()
        if self.ckpt is not None:
            self._restore(trainer)
            self._epoch = self.ckpt["trainer"]["epoch"]
            if self.ckpt["stop_reason"] == "early_stopping" or self._epoch >= self.cfg.train.epochs:
                self.stop_reason = self.ckpt["stop_reason"]
                self.log(f"train: {self.last_path} has finished ({self.stop_reason} after epoch {self._epoch}); "
                         "nothing to do (with train.schedule=constant, raise train.epochs to train on)")
                return self._result()
        self.run_log = RunLog(self.out_dir, self.targets, self.log) if self.main else None
        try:
            if self.main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.run_log.write_config(self.cfg)
                write_text_atomic(self.out_dir / "run.json",
                                  json.dumps({"data_dir": str(self.data_dir.resolve())}, indent=1))
                self.run_log.keep_rows_up_to(self.ckpt["trainer"]["epoch"] if self.ckpt else 0)
                self.run_log.open_tensorboard(trainer, self.optimizer)
            self._announce()
            trainer.run(self.train_loader, max_epochs=None if self.ckpt else self.cfg.train.epochs)
        except NonFiniteLoss as exc:
            kept = (f"the last good checkpoint {self.last_path} is kept" if self.last_path.is_file()
                    else "no checkpoint was written")
            raise OkkhorError(f"{exc}; training stopped and {kept}; try a lower train.lr or set train.clip_grad") \
                from None
        finally:
            self._close_bar()
            if self.run_log is not None:
                self.run_log.close()
        self._epoch = trainer.state.epoch
        if self.best_score is not None:
            self.log(f"train: best valid score {self.best_score:.4f} at epoch {self.best_epoch} ({self.stop_reason} "
                     f"after epoch {self._epoch}); checkpoints in {self.last_path.parent}")
        return self._result()

    def _announce(self) -> None:
        cfg, plan, data = self.cfg, self.plan, self.data
        iters = len(self.train_loader)
        start = f"resuming after epoch {self.ckpt['trainer']['epoch']}; " if self.ckpt else ""
        self.log(f"train: {start}{len(data.train_idx)} training images, {len(data.valid_idx)} valid, "
                 f"{len(data.clean_idx)} train_clean; {cfg.model.name} at {cfg.data.image_size} px on "
                 f"{self.device.type} (amp {cfg.train.amp}{', channels_last' if cfg.train.channels_last else ''})")
        self.log(f"train: effective batch {plan.effective(self.world)} = batch {plan.batch_size} x accum "
                 f"{plan.accum} x {self.world} process{'es' if self.world > 1 else ''}; {iters} iterations and "
                 f"{steps_per_epoch(iters, plan.accum)} optimizer steps per epoch")
