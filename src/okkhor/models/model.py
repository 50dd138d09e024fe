"""The model: a timm backbone (in_chans=1) with one linear head per target on shared pooled features."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from okkhor.config import Config, ModelConfig, config_from_dict
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.io.checkpoint import load as load_checkpoint  # the name inference and tests know it by
from okkhor.models.activations import create_backbone
from okkhor.targets import Targets


class GraphemeModel(nn.Module):
    """Backbone -> pooled features -> dropout -> one linear head per target. forward returns a tuple of logits.

    With `graphemes` (the label triples [G, T] seen in training), an auxiliary grapheme head over them follows the
    target heads: forward then returns T + 1 logits, the last over the G graphemes, and the triples travel with
    the weights as the buffer `grapheme_classes`.
    """

    def __init__(self, backbone: nn.Module, targets: Targets, dropout: float = 0.0, graphemes=None):
        super().__init__()
        if not isinstance(targets, Targets):
            raise TypeError(f"targets must be a Targets, got {type(targets).__name__}")
        self.backbone = backbone
        self.target_names = tuple(targets.names)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # the pooled output's width: some models (mobilenetv3, ...) add a head conv after num_features
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleList([nn.Linear(features, n) for n in targets.num_classes])
        self.grapheme_head = None
        if graphemes is not None:
            classes = torch.as_tensor(graphemes, dtype=torch.int64)
            if classes.ndim != 2 or classes.shape[1] != len(targets) or len(classes) < 1:
                raise ValueError(f"graphemes must be [G >= 1, {len(targets)}] label rows, got {tuple(classes.shape)}")
            self.register_buffer("grapheme_classes", classes)
            self.grapheme_head = nn.Linear(features, len(classes))

    def forward_heads(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.dropout(features)
        out = tuple(head(features) for head in self.heads)
        return out if self.grapheme_head is None else out + (self.grapheme_head(features),)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.forward_heads(self.backbone(x))


def _pretrained_error(name: str, exc: Exception) -> OkkhorError:
    return OkkhorError(f"model.pretrained=true: could not load pretrained weights for '{name}' "
                       f"({exc.__class__.__name__}); this needs network access to the model hub or a local "
                       f"cache; set model.pretrained=false to train from scratch")


def build_model(mcfg: ModelConfig, targets: Targets, graphemes=None) -> GraphemeModel:
    """Build the model for a model config; an unknown timm name or unreachable weights is one clear error.

    `graphemes` ([G, T] label triples) adds the auxiliary grapheme head; it is required when
    model.grapheme_head is true and ignored otherwise.
    """
    if mcfg.grapheme_head and graphemes is None:
        raise ValueError("model.grapheme_head=true needs the training graphemes")
    import timm

    if not timm.is_model(mcfg.name):
        close = timm.list_models(f"*{mcfg.name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise OkkhorError(f"model.name: unknown timm model '{mcfg.name}'{hint}")
    try:
        backbone = create_backbone(mcfg.name, act=mcfg.act, pretrained=mcfg.pretrained, in_chans=1,
                                   drop_path=mcfg.drop_path, act_in_se=mcfg.act_in_se)
    except OkkhorError:
        raise
    except Exception as exc:
        if mcfg.pretrained:
            raise _pretrained_error(mcfg.name, exc) from None
        raise
    return GraphemeModel(backbone, targets, mcfg.dropout, graphemes if mcfg.grapheme_head else None)


def weights_mismatch(model: nn.Module, weights: dict) -> str:
    """'' when `weights` fit `model` exactly, else a short account of what differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in weights]
    extra = [k for k in weights if k not in want]
    shapes = [k for k in want if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(want[k].shape)]
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in ((missing, "missing"), (extra, "unexpected"),
                                                             (shapes, "of another shape")) if v]
    return "; ".join(parts)


def load_for_inference(path: str | Path, map_location: str | torch.device = "cpu"
                       ) -> tuple[GraphemeModel, Config, Targets, dict[str, Any]]:
    """(model in eval mode with the EMA weights when the run kept them, config, targets, the whole checkpoint).

    A checkpoint that is not okkhor's, or whose weights do not fit the model its config and targets describe,
    is one clear error naming the file.
    """
    ckpt = load_checkpoint(path, map_location)
    checkpoint.require(ckpt, checkpoint.INFERENCE_KEYS, path)
    try:
        cfg = config_from_dict(ckpt[checkpoint.CONFIG])
        targets = Targets.from_dict(ckpt[checkpoint.TARGETS])
    except OkkhorError as exc:
        raise OkkhorError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OkkhorError(f"{path}: not an okkhor checkpoint (bad config or targets: "
                          f"{exc.__class__.__name__}: {exc})") from None
    mcfg = ModelConfig(**{**cfg.model.__dict__, "pretrained": False})
    weights = checkpoint.inference_weights(ckpt, path)
    try:
        model = build_model(mcfg, targets, weights.get("grapheme_classes"))
    except (OkkhorError, ValueError) as exc:
        raise OkkhorError(f"{path}: {exc}") from None
    mismatch = weights_mismatch(model, weights)
    if mismatch:
        heads = ", ".join(f"{n} ({c})" for n, c in zip(targets.names, targets.num_classes, strict=False))
        raise OkkhorError(f"{path}: its weights do not fit the model its config describes (model.name "
                          f"{cfg.model.name}, targets {heads}): {mismatch} tensors")
    model.load_state_dict(weights)
    model.eval()
    return model, cfg, targets, ckpt
