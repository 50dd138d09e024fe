"""Mixing for several heads (mixup, cutmix, FMix, Dirichlet k-way, manifold) and the mixed multi-head loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model  # the plain module under DDP / DataParallel / compile

from okkhor.config import MixConfig
from okkhor.options import MIX_KINDS

# mix.kind -> what it does; a new kind is one entry here and its branch in Mixer.plan
FMIX_DECAY = 3.0  # FMix's decay power: the spectrum falls as 1 / frequency**3, so masks are a few smooth blobs


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
    """Mean over the batch of sum_t w_t * sum_k lambda_k * CE(logits_t, y_t of source k), in float32.

    `label_smoothing` goes to every cross-entropy; `ohem` < 1 keeps only that fraction of the samples with the
    largest loss (at least one) before averaging.
    """
    n_targets = mt.labels.shape[2]
    if len(logits) != n_targets or len(loss_weights) != n_targets:
        raise ValueError(f"{len(logits)} logits and {len(loss_weights)} loss weights for {n_targets} targets")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if not 0.0 < ohem <= 1.0:
        raise ValueError(f"ohem must be in (0, 1], got {ohem}")
    weights = mt.weights.float()
    per_sample = torch.zeros(mt.labels.shape[0], device=mt.labels.device, dtype=torch.float32)
    for t, (out, w) in enumerate(zip(logits, loss_weights, strict=False)):
        out = out.float()
        for k in range(mt.labels.shape[1]):
            ce = F.cross_entropy(out, mt.labels[:, k, t], reduction="none", label_smoothing=label_smoothing)
            per_sample = per_sample + w * weights[:, k] * ce
    if ohem < 1.0:
        keep = max(1, int(round(ohem * per_sample.shape[0])))
        per_sample = per_sample.topk(keep).values
    return per_sample.mean()


@dataclass
class MixPlan:
    """One batch's mixing: sample b is sum_k weights[b, k] * source index[b, k] (column 0 is the sample itself).

    For cutmix and fmix, `mask` [B, 1, H, W] marks where source 1 is pasted and the weights are the pasted areas.
    """

    kind: str
    index: torch.Tensor
    weights: torch.Tensor
    mask: Optional[torch.Tensor] = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Mix a batch tensor [B, ...] (images, or features for manifold mixing) on its own device and dtype."""
        index = self.index.to(t.device)
        if self.mask is not None:
            return torch.where(self.mask.to(t.device), t[index[:, 1]], t)
        w = self.weights.to(device=t.device, dtype=t.dtype).view(*self.weights.shape, *([1] * (t.dim() - 1)))
        out = w[:, 0] * t
        for k in range(1, index.shape[1]):
            out = out + w[:, k] * t[index[:, k]]
        return out

    def targets(self, y: torch.Tensor) -> MixedTargets:
        """Labels [B, T] -> MixedTargets on the labels' device."""
        return MixedTargets(y[self.index.to(y.device)], self.weights.to(y.device))


def backbone_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each stage of the model's timm backbone, from its `feature_info`, shallow to deep.

    resnet family: act1 (stem), layer1..layer4; efficientnet family: blocks.0, .1, .2, .4, .6.
    """
    inner = unwrap_model(model)
    backbone = unwrap_model(getattr(inner, "backbone", inner))
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(f"{type(backbone).__name__} has no feature_info; manifold mixing needs a timm backbone")
    names = [f["module"] for f in info]
    modules = dict(backbone.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{type(backbone).__name__}: feature_info names modules it lacks: {', '.join(missing)}")
    return [(n, modules[n]) for n in names]


def _without_compile(model: nn.Module) -> nn.Module:
    """Peel torch.compile wrappers off the outside: hooks added after compiling are not seen by compiled code."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def _forward_manifold(model: nn.Module, x: torch.Tensor, plan: MixPlan, layer: int):
    stages = backbone_stages(model)
    if layer >= len(stages):
        raise ValueError(f"mix.layer={layer}: the backbone has stages 0..{len(stages) - 1} "
                         f"({', '.join(n for n, _ in stages)})")
    name, stage = stages[layer]
    calls = []

    def mix_output(module: nn.Module, inputs, output):
        calls.append(1)
        return plan.apply(output) if len(calls) == 1 else output

    handle = stage.register_forward_hook(mix_output)
    try:
        logits = _without_compile(model)(x)
    finally:
        handle.remove()
    if not calls:
        raise RuntimeError(f"manifold mixing: backbone stage '{name}' did not run through its hook (a compiled "
                           f"model inside DistributedDataParallel?); compile outside DDP or use another mix.kind")
    return logits


def _check_config(cfg: MixConfig) -> None:
    if cfg.kind not in MIX_KINDS:
        raise ValueError(f"mix.kind must be one of {', '.join(MIX_KINDS)}, got {cfg.kind!r}")
    for key in ("alpha", "prob", "switch"):
        if isinstance(getattr(cfg, key), bool) or not isinstance(getattr(cfg, key), (int, float)):
            raise TypeError(f"mix.{key} must be a number, got {type(getattr(cfg, key)).__name__}")
    for key in ("k", "layer", "off_epoch"):
        if isinstance(getattr(cfg, key), bool) or not isinstance(getattr(cfg, key), int):
            raise TypeError(f"mix.{key} must be an int, got {type(getattr(cfg, key)).__name__}")
    if not cfg.alpha > 0:
        raise ValueError(f"mix.alpha must be > 0, got {cfg.alpha}")
    if not 0.0 <= cfg.prob <= 1.0:
        raise ValueError(f"mix.prob must be in [0, 1], got {cfg.prob}")
    if not 0.0 <= cfg.switch <= 1.0:
        raise ValueError(f"mix.switch must be in [0, 1], got {cfg.switch}")
    if cfg.k < 2:
        raise ValueError(f"mix.k must be >= 2, got {cfg.k}")
    if cfg.layer < 0:
        raise ValueError(f"mix.layer must be >= 0, got {cfg.layer}")
    if cfg.off_epoch < 0:
        raise ValueError(f"mix.off_epoch must be >= 0, got {cfg.off_epoch}")


class Mixer:
    """Runs the model's forward on a (possibly mixed) batch and returns (logits, MixedTargets).

    Every random draw comes from the mixer's own CPU torch.Generator (one draw per batch seeds that batch's
    numpy Generator for the Beta/Dirichlet/box draws), so `state_dict`/`load_state_dict` make a resumed run draw
    exactly what the uninterrupted one would. Each process of a multi-process run mixes its own batch: give each
    rank its own seed. `epoch` is compared with `mix.off_epoch` (mixing stops once epoch >= off_epoch > 0).
    """

    def __init__(self, cfg: Union[MixConfig, str], seed: int = 0):
        if isinstance(cfg, str):
            cfg = MixConfig(kind=cfg)  # type: ignore[arg-type]
        if not isinstance(cfg, MixConfig):
            raise TypeError(f"cfg must be a MixConfig or a mix kind name, got {type(cfg).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        _check_config(cfg)
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed)

    def active(self, epoch: int) -> bool:
        return self.cfg.kind != "none" and not (self.cfg.off_epoch and epoch >= self.cfg.off_epoch)

    def plan(self, shape: Sequence[int], epoch: int = 0, device: torch.device | str = "cpu") -> Optional[MixPlan]:
        """Draw the mixing of a batch of this shape ([B, C, H, W]); None when this batch stays unmixed. A cutmix
        or fmix mask is built on `device` (the batch's)."""
        if not self.active(epoch):
            return None
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        rng = np.random.default_rng(seed)
        if rng.random() >= self.cfg.prob:
            return None
        kind = self.cfg.kind
        if kind == "both":
            kind = "cutmix" if rng.random() < self.cfg.switch else "mixup"
        b = int(shape[0])
        alpha = float(self.cfg.alpha)
        columns = [np.arange(b)]
        if kind == "dirichlet":
            weights = rng.dirichlet([alpha] * self.cfg.k, size=b)
            columns += [rng.permutation(b) for _ in range(self.cfg.k - 1)]
        else:
            lam = rng.beta(alpha, alpha, size=b)
            columns.append(rng.permutation(b))
            weights = np.stack([lam, 1.0 - lam], axis=1)
        index = torch.from_numpy(np.stack(columns, axis=1)).long()
        mask = None
        if kind in ("cutmix", "fmix"):
            masks = _cutmix_boxes if kind == "cutmix" else _fmix_masks
            mask, pasted = masks(rng, 1.0 - weights[:, 0], int(shape[-2]), int(shape[-1]), device)
            weights = np.stack([1.0 - pasted, pasted], axis=1)
        return MixPlan(kind, index, torch.from_numpy(weights).float(), mask)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int):
        plan = self.plan(x.shape, epoch, x.device)
        if plan is None:
            return model(x), MixedTargets.unmixed(y)
        if plan.kind == "manifold":
            logits = _forward_manifold(model, x, plan, self.cfg.layer)
        else:
            logits = model(plan.apply(x))
        return logits, plan.targets(y)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError("mixer state must be a dict with a 'generator' entry (from Mixer.state_dict)")
        self.generator.set_state(state["generator"])


def _cutmix_boxes(rng: np.random.Generator, area: np.ndarray, h: int, w: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """Boxes of about `area` (share of the image) per sample, centred uniformly and clipped to the image.

    Returns the paste mask [B, 1, h, w], built on `device` from the boxes' corners (B numbers each, drawn on the
    CPU), and the share of pixels really pasted (known on the host), which becomes the label weight.
    """
    side = np.sqrt(np.clip(area, 0.0, 1.0))
    ch, cw = np.round(h * side).astype(np.int64), np.round(w * side).astype(np.int64)
    cy, cx = rng.integers(0, h, size=len(area)), rng.integers(0, w, size=len(area))
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy - ch // 2 + ch, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx - cw // 2 + cw, 0, w)
    corners = torch.from_numpy(np.stack([y0, y1, x0, x1])).to(device, non_blocking=True).view(4, -1, 1, 1)
    ys = torch.arange(h, device=corners.device).view(1, h, 1)
    xs = torch.arange(w, device=corners.device).view(1, 1, w)
    mask = (ys >= corners[0]) & (ys < corners[1]) & (xs >= corners[2]) & (xs < corners[3])
    pasted = ((y1 - y0) * (x1 - x0)) / float(h * w)
    return mask.unsqueeze(1), pasted


def _fmix_masks(rng: np.random.Generator, area: np.ndarray, h: int, w: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """FMix (Harris et al., 2020): per sample, a low-frequency random field (complex Gaussian noise scaled by
    1 / frequency**FMIX_DECAY, inverse FFT) whose round(area * h * w) highest pixels are pasted.

    The noise is drawn on the CPU (the mixer's seeded generator); the inverse FFT and the ranking run on `device`.
    Returns the paste mask [B, 1, h, w] and each mask's exact area (share of pixels), the label weight.
    """
    b = len(area)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / max(h, w)) ** FMIX_DECAY
    noise = rng.standard_normal((2, b, h, fx.shape[1])).astype(np.float32)
    noise = torch.from_numpy(noise * scale.astype(np.float32)).to(device, non_blocking=True)
    field = torch.fft.irfft2(torch.complex(noise[0], noise[1]), s=(h, w)).reshape(b, -1)
    n_pasted = np.round(np.clip(area, 0.0, 1.0) * h * w).astype(np.int64)
    order = torch.argsort(-field, dim=1, stable=True)  # highest first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=field.device).expand(b, -1))
    mask = rank < torch.from_numpy(n_pasted).to(field.device, non_blocking=True)[:, None]
    return mask.reshape(b, 1, h, w), n_pasted / float(h * w)
