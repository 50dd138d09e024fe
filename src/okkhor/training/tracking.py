"""Optional experiment trackers through ignite's loggers, beside TensorBoard: `log.wandb` (a Weights & Biases
project) and `log.mlflow` (an MLflow tracking URI). Both are off by default; one that is set while its package
is not installed costs one log line and the run goes on without it."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

from ignite.engine import Engine, Events

from okkhor.config import Config

EVERY = 10  # iterations between training-loss points, as in TensorBoard


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

            from okkhor.training.train import _flatten  # imported here: okkhor.training.train imports this module

            mlflow.log_params(_flatten(cfg.to_dict()))
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
