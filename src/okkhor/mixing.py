"""Mixing for several heads (mixup, cutmix, Dirichlet k-way, manifold) and the mixed multi-head loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from okkhor.config import MixConfig


@dataclass
class MixedTargets:
    """Per sample, K source images: labels [B, K, T] and their weights [B, K] (rows sum to 1)."""

    labels: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def unmixed(cls, y: torch.Tensor) -> "MixedTargets":
        return cls(y.unsqueeze(1), torch.ones(y.shape[0], 1, device=y.device))


def multihead_loss(logits: Sequence[torch.Tensor], mt: MixedTargets, loss_weights: Sequence[float],
                   label_smoothing: float = 0.0, ohem: float = 1.0) -> torch.Tensor:
    """Mean over the batch of sum_t w_t * sum_k lambda_k * CE(logits_t, y_t of source k)."""
    per_sample = torch.zeros(mt.labels.shape[0], device=mt.labels.device, dtype=torch.float32)
    for t, (out, w) in enumerate(zip(logits, loss_weights)):
        out = out.float()
        for k in range(mt.labels.shape[1]):
            ce = F.cross_entropy(out, mt.labels[:, k, t], reduction="none", label_smoothing=label_smoothing)
            per_sample = per_sample + w * mt.weights[:, k] * ce
    if ohem < 1.0:
        keep = max(1, int(round(ohem * per_sample.shape[0])))
        per_sample = per_sample.topk(keep).values
    return per_sample.mean()


class Mixer:
    """Runs the model's forward on a (possibly mixed) batch and returns (logits, MixedTargets)."""

    def __init__(self, cfg: MixConfig, seed: int = 0):
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)

    def active(self, epoch: int) -> bool:
        return self.cfg.kind != "none" and not (self.cfg.off_epoch and epoch >= self.cfg.off_epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int):
        if not self.active(epoch):
            return model(x), MixedTargets.unmixed(y)
        raise NotImplementedError("mixing lands with the recipe issue")

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
