"""The trainer's event handlers: run state, epoch meter and progress, evaluation, run log (metrics.csv and
TensorBoard), the stop decision, and the non-finite-loss stop."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from ignite.engine import Engine, Events

from okkhor.engine import NonFiniteLoss, evaluate
from okkhor.errors import OkkhorError
from okkhor.fsutil import atomic_path
from okkhor.targets import Targets


def metrics_columns(targets: Targets) -> list[str]:
    return ["epoch", "split", "loss", "score", *[f"recall_{n}" for n in targets.names], "lr", "seconds"]


class RunState:
    """What a run has decided so far: the best valid score and its epoch, the last results, why it stopped, and
    the batch plan (the live object the step, the sampler and OOM recovery share). A checkpointed object."""

    def __init__(self, plan: Any, max_epochs: int, stop_after: int = 0):
        self.plan, self.max_epochs, self.stop_after = plan, max_epochs, stop_after
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.improved = False
        self.results: dict[str, dict] = {}
        self.stop_reason = "running"

    @property
    def finished(self) -> bool:
        return self.stop_reason in ("completed", "early_stopping")

    def record(self, epoch: int, results: dict[str, dict]) -> None:
        self.results = results
        score = results["valid"]["score"]
        self.improved = self.best_score is None or score > self.best_score
        if self.improved:
            self.best_score, self.best_epoch = score, epoch

    def valid_score(self, engine: Any = None) -> float:
        return self.results["valid"]["score"]

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

    def attach(self, trainer: Engine) -> "EpochMeter":
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
        if self.show_progress:
            from okkhor.progress import progress

            self.bar = progress(total=trainer.state.epoch_length, unit="batch", leave=False,
                                desc=f"epoch {trainer.state.epoch}/{self.max_epochs}")

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


class Evaluation:
    """EPOCH_COMPLETED: evaluate every split (train_clean, valid) with its evaluator Engine and record the results
    in the run state; `then(score)` gets the valid score (a plateau schedule steps on it)."""

    def __init__(self, evaluators: dict[str, tuple[Engine, Any, Any]], state: RunState,
                 then: Callable[[float], None] = lambda score: None):
        if "valid" not in evaluators:
            raise ValueError("evaluators need a 'valid' split")
        self.evaluators, self.state, self.then = evaluators, state, then
        self.finished_at: dict[str, float] = {}

    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(*self.evaluators[split])

    def __call__(self, trainer: Engine) -> None:
        results = {}
        for split in self.evaluators:
            results[split] = self.evaluate(split)
            self.finished_at[split] = time.time()
        self.state.record(trainer.state.epoch, results)
        self.then(results["valid"]["score"])


class RunLog:
    """Rank 0's metrics.csv (rewritten atomically each epoch: a train row, then one per evaluated split) and
    TensorBoard events (the training loss and lr every 10 iterations, each row's values per epoch)."""

    def __init__(self, out_dir: Path, targets: Targets):
        self.out_dir, self.targets = out_dir, targets
        self.columns = metrics_columns(targets)
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.tb = None

    def keep_rows_up_to(self, epoch: int) -> None:
        """On resume: the rows of the epochs the checkpoint covers (a crash may have left one more)."""
        if self.path.is_file():
            df = pd.read_csv(self.path)
            self.rows = df[df["epoch"] <= epoch].to_dict("records")
        self.write()

    def add(self, epoch: int, split: str, result: dict, lr: float, seconds: float) -> None:
        self.rows.append({"epoch": epoch, "split": split, **{k: result.get(k) for k in self.columns[2:-2]},
                          "lr": lr, "seconds": round(seconds, 3)})
        if self.tb is not None:
            for key in self.columns[2:-2]:
                if key in result:
                    self.tb.writer.add_scalar(f"{split}/{key}", result[key], epoch)

    def add_epoch(self, epoch: int, meter: EpochMeter, evaluation: Evaluation, lr: float) -> None:
        self.add(epoch, "train", {"loss": meter.loss}, lr, meter.seconds)
        for split, result in evaluation.state.results.items():
            self.add(epoch, split, result, lr, evaluation.finished_at[split] - meter.start)
        self.write()

    def write(self) -> None:
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows, columns=self.columns).to_csv(tmp, index=False)
        if self.tb is not None:
            self.tb.writer.flush()

    def open_tensorboard(self, trainer: Engine, optimizer: Any) -> None:
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


class NonFiniteStop:
    """EXCEPTION_RAISED: a NaN/inf loss becomes one user-facing line naming the checkpoint that is kept; every
    other exception goes on unchanged."""

    def __init__(self, last_path: Path):
        self.last_path = last_path

    def __call__(self, engine: Engine, exc: BaseException) -> None:
        if isinstance(exc, NonFiniteLoss):
            kept = (f"the last good checkpoint {self.last_path} is kept" if self.last_path.is_file()
                    else "no checkpoint was written")
            raise OkkhorError(f"{exc}; training stopped and {kept}; try a lower train.lr or set train.clip_grad") \
                from None
        raise exc


def summary_line(epoch: int, epochs: int, meter: EpochMeter, state: RunState, lr: float, targets: Targets) -> str:
    results = state.results
    valid = results["valid"]
    recalls = " ".join(f"{n} {valid[f'recall_{n}']:.4f}" for n in targets.names)
    clean = f"  train_clean {results['train_clean']['score']:.4f}" if "train_clean" in results else ""
    return (f"epoch {epoch}/{epochs}  loss {meter.loss:.4f}  valid {valid['score']:.4f} (loss {valid['loss']:.4f}; "
            f"{recalls}){clean}  lr {lr:.2e}  {meter.images_per_s:.0f} img/s  {time.time() - meter.start:.0f}s"
            f"{'  *best' if state.improved else ''}")
