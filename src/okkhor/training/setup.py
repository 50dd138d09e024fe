"""One builder of the training step (model, optimizer, schedule, loss, mixer, EMA) for train, memory and bench."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from okkhor.config import Config, ModelConfig
from okkhor.models.model import GraphemeModel, build_model
from okkhor.targets import Targets
from okkhor.training.distributed import rank
from okkhor.training.finetune import init_from
from okkhor.training.loss import TrainLoss
from okkhor.training.mixing import Mixer
from okkhor.training.oom import OomRecovery
from okkhor.training.optim import Schedule, build_optimizer, build_scheduler
from okkhor.training.step import BatchPlan, Precision, TrainStep, run_whole


def build_net(mcfg: ModelConfig, targets: Targets, device: torch.device | str = "cpu", channels_last: bool = False,
              graphemes: Any = None, init: Optional[Path] = None,
              log: Callable[[str], None] = print) -> GraphemeModel:
    """The model of `mcfg` for `targets` (with the grapheme head over `graphemes` when mcfg asks for it), started
    from checkpoint `init`'s weights when given (okkhor.training.finetune.init_from), on `device` in its memory
    format. Its initial weights come from the global torch generator: seed it first."""
    net = build_model(mcfg, targets, graphemes)
    if init is not None:
        init_from(net, init, mcfg.name, targets, log)
    return net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def loss_weights(cfg: Config, targets: Targets, net: Optional[nn.Module] = None) -> list[float]:
    """The weight of each output's cross-entropy: train.loss_weights (else the targets' metric weights), then
    train.grapheme_loss_weight when `net` has the auxiliary grapheme head."""
    weights = [float(w) for w in (cfg.train.loss_weights or targets.weights)]
    if net is not None and getattr(net, "grapheme_head", None) is not None:
        weights.append(float(cfg.train.grapheme_loss_weight))
    return weights


@dataclass
class TrainSetup:
    """The pieces of a training step; the stateful ones are what a checkpoint saves."""

    net: nn.Module                 # the plain model: its weights are the checkpoint's
    model: nn.Module               # what the step runs: `net`, or a DDP / compiled wrapper of it
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    mixer: Mixer                   # always one (mix.kind none mixes nothing and draws nothing)
    ema: Optional[Any]             # timm ModelEmaV3 (train.ema > 0), else None
    oom: Optional[OomRecovery]     # the micro-batch runner that recovers from out-of-memory, or None
    loss: TrainLoss
    step: TrainStep

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation and inference use: the EMA weights when kept, else the trained ones."""
        return self.ema.module if self.ema is not None else self.net


def build_training(net: nn.Module, cfg: Config, targets: Targets, precision: Precision, plan: BatchPlan,
                   iterations_per_epoch: int, *, wrap: Optional[Callable[[nn.Module], nn.Module]] = None,
                   recover_oom: bool = True, log: Callable[[str], None] = print) -> TrainSetup:
    """The training step of `cfg` on `net` (built by `build_net`, on its device):

    - EMA: timm ModelEmaV3 of `net` with warm-up (the averaging horizon grows with the step count up to
      1/(1 - train.ema), so short runs work too), when train.ema > 0;
    - `wrap(net)`: the module the step runs (the trainer's DDP and torch.compile), else `net` itself;
    - the optimizer (train.optimizer through timm) and the lr schedule over `iterations_per_epoch` micro-batches
      of `plan.accum` per optimizer step;
    - the loss: the Mixer of cfg.mix (seeded per process: each mixes its own batch its own way) and the weighted
      cross-entropies (`loss_weights`) with label smoothing and OHEM;
    - `recover_oom`: OomRecovery redoes a micro-batch that ran out of memory in chunks (the plan shrinks at the
      epoch's end); off, an out-of-memory error propagates (what a memory probe measures).
    """
    tcfg = cfg.train
    ema = None
    if tcfg.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=tcfg.ema, use_warmup=True)
    model = wrap(net) if wrap is not None else net
    optimizer = build_optimizer(net, tcfg)
    schedule = build_scheduler(optimizer, tcfg, iterations_per_epoch, plan.accum)
    mixer = Mixer(cfg.mix, seed=cfg.seed + rank())
    oom = OomRecovery(plan, net, log=log) if recover_oom else None
    loss = TrainLoss(loss_weights(cfg, targets, net), tcfg.label_smoothing, tcfg.ohem, mixer)
    step = TrainStep(model, optimizer, plan, loss, precision=precision, scheduler=schedule, clip_grad=tcfg.clip_grad,
                     ema=ema, runner=oom if oom is not None else run_whole)
    return TrainSetup(net, model, optimizer, schedule, mixer, ema, oom, loss, step)
