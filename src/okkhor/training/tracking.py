"""What a run records: metrics.csv and TensorBoard (RunLog), and the optional W&B / MLflow trackers."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from ignite.engine import Engine, Events

from okkhor.config import Config
from okkhor.targets import Targets
from okkhor.utils.files import write_csv_atomic

# The trackers go through ignite's loggers: `log.wandb` (a Weights & Biases project) and `log.mlflow` (an MLflow
# tracking URI). Both are off by default; one that is set while its package is not installed costs one log line and
# the run goes on without it.

EVERY = 10  # iterations between training-loss points, in TensorBoard and the trackers


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict (Config.to_dict()) as {"dotted.key": value}."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def metrics_columns(targets: Targets) -> list[str]:
    """The columns of metrics.csv; `source` is a valid row's data source (empty on train and train_clean rows)."""
    return ["epoch", "split", "source", "loss", "score", *[f"recall_{n}" for n in targets.names], "lr", "seconds"]


class RunLog:
    """Rank 0's metrics.csv (rewritten atomically each epoch: a train row, then one per evaluated split, one valid
    row per source) and TensorBoard events (the training loss and lr every 10 iterations, each row's values per
    epoch; a valid row of a run of several sources under valid/<source>/).

    `sources`: the run's source names; a results key without a source (`valid` of a one-source run) is the first's.
    """

    def __init__(self, out_dir: Path, targets: Targets, sources: Sequence[str] = ()):
        self.out_dir, self.targets, self.sources = out_dir, targets, list(sources)
        self.columns = metrics_columns(targets)
        self.values = self.columns[3:-2]
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.tb = None

    def keep_rows_up_to(self, epoch: int) -> None:
        """On resume: the rows of the epochs the checkpoint covers (a crash may have left one more); rows written
        before metrics.csv had a `source` column get the (one) source's name on their valid rows."""
        if self.path.is_file():
            df = pd.read_csv(self.path)
            if "source" not in df.columns:
                df["source"] = [self.sources[0] if s == "valid" and self.sources else None for s in df["split"]]
            self.rows = df[df["epoch"] <= epoch].to_dict("records")
        self.write()

    def add(self, epoch: int, key: str, result: dict, lr: float, seconds: float) -> None:
        """A row of results `key` (a split, or `valid/<source>`)."""
        split, source = key.partition("/")[::2]
        if split == "valid" and not source and self.sources:
            source = self.sources[0]
        self.rows.append({"epoch": epoch, "split": split, "source": source or None,
                          **{k: result.get(k) for k in self.values}, "lr": lr, "seconds": round(seconds, 3)})
        if self.tb is not None:
            for name in self.values:
                if name in result:
                    self.tb.writer.add_scalar(f"{key}/{name}", result[name], epoch)

    def add_epoch(self, epoch: int, meter: Any, evaluation: Any, lr: float) -> None:
        """The epoch's rows: `meter` (handlers.EpochMeter) the training loss and time, `evaluation`
        (handlers.Evaluation) each split's results and when they were done."""
        self.add(epoch, "train", {"loss": meter.loss}, lr, meter.seconds)
        for key, result in evaluation.state.results.items():
            self.add(epoch, key, result, lr, evaluation.finished_at[key] - meter.start)
        self.write()

    def write(self) -> None:
        write_csv_atomic(self.path, pd.DataFrame(self.rows, columns=self.columns))
        if self.tb is not None:
            self.tb.writer.flush()

    def open_tensorboard(self, trainer: Engine, optimizer: Any) -> None:
        from ignite.handlers import TensorboardLogger

        self.tb = TensorboardLogger(log_dir=str(self.out_dir / "tb"))
        self.tb.attach_output_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=EVERY), tag="train",
                                      output_transform=lambda out: {"loss": out["loss"]})
        self.tb.attach_opt_params_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=EVERY),
                                          optimizer=optimizer)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _epoch_values(results: Callable[[], dict[str, dict]]) -> Callable[[Any], dict[str, float]]:
    """The epoch's results as {"<split>/<key>": value} (numbers only), for an EPOCH_COMPLETED output handler."""
    def transform(_: Any) -> dict[str, float]:
        return {f"{split}/{key}": float(v) for split, values in results().items() for key, v in values.items()
                if isinstance(v, (int, float))}
    return transform


def open_trackers(cfg: Config, trainer: Engine, optimizer: Any, results: Callable[[], dict[str, dict]],
                  log: Callable[[str], None] = print) -> list:
    """ignite loggers for the trackers the config names (attached: the training loss and lr every EVERY
    iterations, each split's results per epoch; the config as run parameters). Call after the evaluation
    handler is attached, on the main process; close() each at the end."""
    loggers = []
    for key, module, what in (("wandb", "wandb", "W&B"), ("mlflow", "mlflow", "MLflow")):
        target = getattr(cfg.log, key)
        if not target:
            continue
        if importlib.util.find_spec(module) is None:
            log(f"train: log.{key} is set but {module} is not installed (pip install {module}); not logging to "
                f"{what}")
            continue
        if key == "wandb":
            from ignite.handlers import WandBLogger

            logger = WandBLogger(project=target, config=cfg.to_dict())
        else:
            from ignite.handlers import MLflowLogger

            logger = MLflowLogger(tracking_uri=target)
            import mlflow

            mlflow.log_params(flatten(cfg.to_dict()))
        logger.attach_output_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=EVERY), tag="train",
                                     output_transform=lambda out: {"loss": out["loss"]})
        logger.attach_opt_params_handler(trainer, event_name=Events.ITERATION_COMPLETED(every=EVERY),
                                         optimizer=optimizer)
        # stepped by the iteration too: W&B wants one increasing step across all points
        logger.attach_output_handler(trainer, event_name=Events.EPOCH_COMPLETED, tag="epoch",
                                     output_transform=_epoch_values(results),
                                     global_step_transform=lambda engine, event: engine.state.iteration)
        log(f"train: logging to {what} ({target})")
        loggers.append(logger)
    return loggers
