"""The trainer's event handlers, and `attach_handlers`, the one place that orders them."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from ignite.engine import Engine, Events

from okkhor.errors import Interrupted, OkkhorError, WriteError
from okkhor.io import checkpoint
from okkhor.targets import Targets
from okkhor.training.distributed import barrier
from okkhor.training.step import NonFiniteLoss, run_evaluator

VALID = "valid"


def valid_key(source: str, several: bool) -> str:
    """The results key of a source's validation: `valid` in a run of one source, `valid/<source>` with several."""
    return f"{VALID}/{source}" if several else VALID


def split_of(key: str) -> tuple[str, str]:
    """(split, source) of a results key: ("valid", "real") of `valid/real`; the source is "" when the key has none."""
    split, _, source = key.partition("/")
    return split, source


class RunState:
    """What a run has decided so far: the best valid score and its epoch, the last results, why it stopped, and
    the batch plan (the live object the step, the sampler and OOM recovery share). A checkpointed object.

    `select` is the results key whose score is the valid score (best.pt, early stopping, a plateau schedule):
    `valid`, or with several sources `valid/<train.select_on>`.
    """

    def __init__(self, plan: Any, max_epochs: int, stop_after: int = 0, select: str = VALID):
        self.plan, self.max_epochs, self.stop_after, self.select = plan, max_epochs, stop_after, select
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.improved = False
        self.results: dict[str, dict] = {}
        self.stop_reason = "running"

    @property
    def finished(self) -> bool:
        return self.stop_reason in checkpoint.FINISHED

    def record(self, epoch: int, results: dict[str, dict]) -> None:
        self.results = results
        score = results[self.select]["score"]
        self.improved = self.best_score is None or score > self.best_score
        if self.improved:
            self.best_score, self.best_epoch = score, epoch

    def valid_score(self, engine: Any = None) -> float:
        return self.results[self.select]["score"]

    def decide(self, trainer: Engine) -> None:
        """EPOCH_COMPLETED, after early stopping: why the run stops here, if it does."""
        epoch = trainer.state.epoch
        if trainer.should_terminate:
            self.stop_reason = "early_stopping"
        elif epoch >= self.max_epochs:
            self.stop_reason = "completed"
        elif self.stop_after and epoch >= self.stop_after:
            self.stop_reason = "stop_after"
        else:
            self.stop_reason = "running"

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "stop_reason": self.stop_reason,
                "finished": self.finished, "batch": self.plan.state_dict(), "metrics": self.results}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch = state["best_score"], int(state["best_epoch"])
        self.stop_reason, self.results = state["stop_reason"], state["metrics"]
        self.plan.load_state_dict(state["batch"])


class EpochMeter:
    """The epoch's training loss, images and time (and a progress display on the main process).

    The step's loss stays on the device: the meter sums it there and reads the sum to the host every
    `read_every` iterations (for the progress display) and at the epoch's end, never once per iteration.
    """

    def __init__(self, max_epochs: int, show_progress: bool, read_every: int = 50):
        self.max_epochs, self.show_progress, self.read_every = max_epochs, show_progress, read_every
        self.bar = None
        self.start = time.time()
        self.loss_sum: Any = 0.0
        self.iterations, self.images, self.seconds = 0, 0, 0.0
        self._loss = 0.0
        self.trainer: Optional[Engine] = None
        self._resumed: Optional[dict] = None  # a mid-epoch checkpoint's sums, taken up when the epoch starts

    def attach(self, trainer: Engine) -> "EpochMeter":
        self.trainer = trainer
        trainer.add_event_handler(Events.EPOCH_STARTED, self.started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.completed)
        return self

    @property
    def loss(self) -> float:
        """The mean training loss so far (as of the last read)."""
        return self._loss

    def _read(self) -> float:
        self._loss = float(self.loss_sum) / max(self.iterations, 1)
        return self._loss

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def started(self, trainer: Engine) -> None:
        self.start = time.time()
        self.loss_sum, self.iterations, self.images, self._loss = 0.0, 0, 0, 0.0
        if self._resumed is not None:
            state, self._resumed = self._resumed, None
            self.loss_sum, self.iterations, self.images = state["loss_sum"], state["iterations"], state["images"]
            self.start -= state["elapsed"]
        if self.show_progress:
            from okkhor.utils.progress import progress

            self.bar = progress(total=trainer.state.epoch_length, unit="batch", leave=False,
                                desc=f"epoch {trainer.state.epoch}/{self.max_epochs}")
            if self.iterations:
                self.bar.update(self.iterations)

    def iteration(self, trainer: Engine) -> None:
        out = trainer.state.output
        self.images += out["images"]
        self.loss_sum = self.loss_sum + out["loss"]  # a device tensor: summed there
        self.iterations += 1
        if self.bar is not None:
            if self.iterations % self.read_every == 1 or self.read_every == 1:
                rate = self.images / max(time.time() - self.start, 1e-9)
                self.bar.set_postfix(loss=f"{self._read():.4f}", lr=f"{out['lr']:.2e}", img_s=f"{rate:.0f}",
                                     refresh=False)
            self.bar.update(1)

    def completed(self, trainer: Engine = None) -> None:
        if self.iterations:
            self._read()
        self.seconds = time.time() - self.start
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def state_dict(self) -> dict:
        """The epoch's sums so far (all zero in an epoch-end checkpoint: the next epoch starts afresh)."""
        if self.trainer is None or self.trainer.last_event_name != Events.ITERATION_COMPLETED:
            return {"loss_sum": torch.zeros(()), "iterations": 0, "images": 0, "elapsed": 0.0}
        loss_sum = torch.as_tensor(self.loss_sum).detach().cpu().clone()  # the device sum, read once per save
        return {"loss_sum": loss_sum, "iterations": self.iterations, "images": self.images,
                "elapsed": time.time() - self.start}

    def load_state_dict(self, state: dict) -> None:
        self._resumed = dict(state) if state["iterations"] else None


class Evaluation:
    """EPOCH_COMPLETED: evaluate every split (train_clean, then valid: one per source, keyed `valid_key`) with its
    evaluator Engine and record the results in the run state; `then(score)` gets the valid score (the run state's
    `select`; a plateau schedule steps on it)."""

    def __init__(self, evaluators: dict[str, tuple[Engine, Any, Any]], state: RunState,
                 then: Callable[[float], None] = lambda score: None):
        if state.select not in evaluators:
            raise ValueError(f"evaluators need the split {state.select!r} the run state selects on")
        self.evaluators, self.state, self.then = evaluators, state, then
        self.finished_at: dict[str, float] = {}

    def evaluate(self, split: str) -> dict[str, float]:
        return run_evaluator(*self.evaluators[split])

    def __call__(self, trainer: Engine) -> None:
        results = {}
        for split in self.evaluators:
            results[split] = self.evaluate(split)
            self.finished_at[split] = time.time()
        self.state.record(trainer.state.epoch, results)
        self.then(self.state.valid_score())


class StopLine:
    """EXCEPTION_RAISED: a NaN/inf loss or a failed write (a full disk) becomes one user-facing line naming the
    checkpoint that is kept; every other exception goes on unchanged."""

    def __init__(self, last_path: Path):
        self.last_path = last_path

    def _kept(self, what: str) -> str:
        return f"{what} {self.last_path} is kept" if self.last_path.is_file() else "no checkpoint was written"

    def __call__(self, engine: Engine, exc: BaseException) -> None:
        if isinstance(exc, NonFiniteLoss):
            raise OkkhorError(f"{exc}; training stopped and {self._kept('the last good checkpoint')}; try a lower "
                              "train.lr or set train.clip_grad") from None
        if isinstance(exc, WriteError):
            raise WriteError(f"{exc}; training stopped and {self._kept('the last checkpoint')}; make room, then "
                             "continue with --resume") from None
        raise exc


class Preemption:
    """Mid-epoch checkpoints: on SIGTERM or SIGINT, and every `every` iterations (train.checkpoint_every; 0: off).

    `install()` (a context manager) catches the signals on the main thread: the first one only sets a flag (a
    second SIGINT interrupts at once). ITERATION_COMPLETED, between optimizer steps (`at_boundary()`) and before
    the epoch's last iteration, saves `last_path` with `save(trainer)` when due; after a signal it then raises
    `Interrupted` with one line saying how to resume (`resume_hint`: the command to continue; empty on all
    processes but the first, whose line it is). With several processes the flag is all-reduced, so all stop after
    the same step. `epoch_completed` (EPOCH_COMPLETED, after the epoch's checkpoint) stops there when a signal came
    during the evaluation.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, save: Callable[[Engine], Any], last_path: Path, at_boundary: Callable[[], bool],
                 every: int = 0, world_size: int = 1, resume_hint: str = "--resume"):
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        if not callable(save) or not callable(at_boundary):
            raise TypeError("save and at_boundary must be callable")
        self.save, self.last_path, self.at_boundary = save, Path(last_path), at_boundary
        self.every, self.world_size = every, world_size
        self.resume_hint = resume_hint
        self.signum: Optional[int] = None
        self._last_save = 0

    def attach(self, trainer: Engine) -> "Preemption":
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.iteration)
        return self

    @contextlib.contextmanager
    def install(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def _started(self, trainer: Engine) -> None:
        self._last_save = trainer.state.iteration

    def _signalled(self) -> int:
        """The signal's number, the same on every process (0: none)."""
        signum = self.signum or 0
        if self.world_size > 1:
            import ignite.distributed as idist
            import torch

            signum = int(idist.all_reduce(torch.tensor([signum]), op="MAX").item())
        return signum

    def iteration(self, trainer: Engine) -> None:
        # the epoch's last iteration is left to EPOCH_COMPLETED: its checkpoint comes with the evaluation
        length = trainer.state.epoch_length
        if not self.at_boundary() or (length and trainer.state.iteration % length == 0):
            return
        signum = self._signalled()
        if signum or (self.every and trainer.state.iteration - self._last_save >= self.every):
            self.save(trainer)
            self._last_save = trainer.state.iteration
            if signum:
                self.stop(trainer, signum, f"epoch {trainer.state.epoch}, iteration "
                                           f"{trainer.state.iteration % length}/{length}")

    def epoch_completed(self, trainer: Engine) -> None:
        self._last_save = trainer.state.iteration
        signum = self._signalled()
        if signum and not trainer.should_terminate:
            self.stop(trainer, signum, f"the end of epoch {trainer.state.epoch}")

    def stop(self, trainer: Engine, signum: int, where: str) -> None:
        """Raise Interrupted; its line is empty with an empty `resume_hint` (the other processes of a run)."""
        line = (f"train: stopped by {signal.Signals(signum).name} at {where}; saved {self.last_path}; continue "
                f"with {self.resume_hint}") if self.resume_hint else ""
        raise Interrupted(line, signum)


def summary_line(epoch: int, epochs: int, meter: EpochMeter, state: RunState, lr: float, targets: Targets) -> str:
    results = state.results
    valid = results[state.select]
    recalls = " ".join(f"{n} {valid[f'recall_{n}']:.4f}" for n in targets.names)
    clean = f"  train_clean {results['train_clean']['score']:.4f}" if "train_clean" in results else ""
    # several sources: the valid score shown first is the selected source's, then the other sources'
    which = f" {split_of(state.select)[1]}" if state.select != VALID else ""
    others = "".join(f"  {split_of(key)[1]} {r['score']:.4f}" for key, r in results.items()
                     if split_of(key)[1] and split_of(key)[0] == VALID and key != state.select)
    return (f"epoch {epoch}/{epochs}  loss {meter.loss:.4f}  valid{which} {valid['score']:.4f} (loss "
            f"{valid['loss']:.4f}; {recalls}){others}{clean}  lr {lr:.2e}  {meter.images_per_s:.0f} img/s  "
            f"{time.time() - meter.start:.0f}s{'  *best' if state.improved else ''}")


class EpochSeeding:
    """EPOCH_STARTED: every epoch's sample order and augmentation follow from (seed, epoch) alone; the epoch's
    length is the train loader's now (the batch plan may have changed between epochs)."""

    def __init__(self, batches: Any, generator: torch.Generator, seed: int, epoch_length: Callable[[], int]):
        self.batches, self.generator, self.seed, self.epoch_length = batches, generator, seed, epoch_length

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        self.batches.set_epoch(epoch)  # the epoch travels to the workers with each index: (position, epoch)
        self.generator.manual_seed(self.seed * 100003 + epoch)
        engine.state.epoch_length = self.epoch_length()


class EpochEnd:
    """EPOCH_COMPLETED, after the evaluation and the stop decision: the epoch's metrics.csv rows (first: a crash
    before the checkpoint only costs a rerun of this epoch; `run_log` None on all processes but the first), the
    checkpoints, the summary line; then every process meets, and the run stops when it decided to."""

    def __init__(self, run_log: Any, checkpoints: Callable[[Engine], None], meter: EpochMeter, evaluation: Evaluation,
                 state: RunState, optimizer: Any, targets: Targets, epochs: int, log: Callable[[str], None]):
        self.run_log, self.checkpoints, self.meter, self.evaluation = run_log, checkpoints, meter, evaluation
        self.state, self.optimizer, self.targets, self.epochs, self.log = state, optimizer, targets, epochs, log

    def __call__(self, engine: Engine) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.run_log is not None:
            self.run_log.add_epoch(engine.state.epoch, self.meter, self.evaluation, lr)
        self.checkpoints(engine)
        self.log(summary_line(engine.state.epoch, self.epochs, self.meter, self.state, lr, self.targets))
        barrier()
        if self.state.stop_reason != "running":
            engine.terminate()


@dataclass
class RunHandlers:
    """Every handler of a training run (None: not in this run), for `attach_handlers`."""

    plan: Any                          # the live BatchPlan, exposed as engine.state.batch_plan
    oom: Optional[Any]                 # okkhor.training.oom.OomRecovery
    seeding: EpochSeeding
    meter: EpochMeter
    sync_buffers: Callable[[Engine], None]   # every process evaluates (and the first saves) the same BN statistics
    evaluation: Evaluation
    early_stopping: Optional[Any]      # ignite EarlyStopping on the valid score (train.patience)
    state: RunState
    swa: Optional[Any]                 # okkhor.training.average.Swa (train.swa_epochs)
    epoch_end: EpochEnd
    preemption: Preemption
    stop_line: StopLine


def attach_handlers(trainer: Engine, h: RunHandlers) -> Engine:
    """Attach a run's handlers to `trainer` (from step.create_trainer, which attached the TrainStep's own first).

    ignite calls the handlers of an event in the order they were attached, and that order is the run's logic:
      STARTED            the batch plan on engine.state -> preemption (counts mid-epoch saves from here)
      EPOCH_STARTED      step (its epoch counters) -> seeding (sampler epoch, loader generator, epoch length) ->
                         meter (its progress bar reads the epoch length)
      ITERATION_COMPLETED  meter -> preemption (a mid-epoch save holds the meter's sums of this iteration); test
                         hooks, TensorBoard and trackers come after, attached when the run starts
      EPOCH_COMPLETED    step (the short last group's optimizer step, the finiteness check) -> OOM recovery (the
                         smaller plan, before a checkpoint stores it) -> meter (the epoch's loss and time) -> sync
                         buffers -> evaluation -> early stopping (reads the valid score, may terminate) -> state.decide
                         (reads whether it did) -> SWA (this epoch joins the average, before the checkpoint holds it)
                         -> epoch end (metrics.csv, checkpoints, summary) -> preemption (a signal that came during the
                         evaluation stops the run after the epoch's checkpoint)
      EXCEPTION_RAISED   stop line (a NaN loss or a full disk becomes one line)
    """
    if h.oom is not None:
        h.oom.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_STARTED, h.seeding)
    trainer.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "batch_plan", h.plan))
    h.meter.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, h.sync_buffers)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, h.evaluation)
    if h.early_stopping is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, h.early_stopping)  # calls trainer.terminate()
    trainer.add_event_handler(Events.EPOCH_COMPLETED, h.state.decide)
    if h.swa is not None:
        swa = h.swa
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: swa.update(engine.state.epoch))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, h.epoch_end)
    h.preemption.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, h.preemption.epoch_completed)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, h.stop_line)
    return trainer
