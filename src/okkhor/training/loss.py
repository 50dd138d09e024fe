"""The training loss: mixing, then the weighted multi-head cross-entropy with label smoothing and OHEM."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from okkhor.training.mixing import MixedTargets, Mixer, multihead_loss


@dataclass
class TrainLoss:
    """The training loss: mixing (a Mixer, or None) and the weighted multi-head cross-entropy with label smoothing
    and OHEM. `loss(model, x, y, epoch)` returns the batch's mean loss."""

    weights: Sequence[float]
    label_smoothing: float = 0.0
    ohem: float = 1.0
    mixer: Optional[Mixer] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.weights = [float(w) for w in self.weights]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.mixer is not None:
            logits, mixed = self.mixer(model, x, y, epoch)
        else:
            logits, mixed = model(x), MixedTargets.unmixed(y)
        return multihead_loss(logits, mixed, self.weights, self.label_smoothing, self.ohem)
