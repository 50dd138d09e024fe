"""The model: a timm backbone (in_chans=1) with one linear head per target on shared pooled features."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from okkhor.config import Config, ModelConfig, config_from_dict
from okkhor.errors import OkkhorError
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


def _numpy_globals() -> list:
    """What numpy arrays and scalars need to be unpickled (the RNG state of older checkpoints), under the names
    numpy 1 and numpy 2 write; building an array or a scalar of a dtype runs no user code."""
    import numpy as np

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(c)) for c in "?bhilqBHILQefdg"]
    out: list = [np.ndarray, np.dtype, *dtypes]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core, name)
        out += [fn, (fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return out


def _refused(path: Path, exc: Exception) -> OkkhorError | None:
    """The error for a file that torch.load(weights_only=True) refuses to unpickle; None when it is not that."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if not found and "allowlist" not in str(exc):
        return None
    what = f"it asks for {found.group(1)}" if found else "it holds objects other than tensors and plain data"
    return OkkhorError(f"{path}: refused: {what}; okkhor loads checkpoints with torch.load(weights_only=True), "
                       f"which runs no code from the file, so this is not an okkhor checkpoint or it was "
                       f"altered")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file without running code from it (torch.load(weights_only=True), numpy arrays allowed);
    a missing, truncated, foreign or code-carrying file is one clear error naming it."""
    import os
    import warnings

    path = Path(path)
    if path.is_dir():
        raise OkkhorError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise OkkhorError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # e.g. torch's note on the pickle protocol of a foreign file
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise OkkhorError(f"{path}: cannot read: {os.strerror(exc.errno) if exc.errno else exc}") from None
    except Exception as exc:
        refused = _refused(path, exc)
        if refused is not None:
            raise refused from None
        hint = "truncated, corrupted or not a torch file" if path.stat().st_size else "an empty file"
        raise OkkhorError(f"{path}: not a readable checkpoint ({hint}: {exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict):
        raise OkkhorError(f"{path}: not an okkhor checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _weights_mismatch(model: nn.Module, weights: dict) -> str:
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
    for key in ("config", "targets", "model"):
        if key not in ckpt:
            raise OkkhorError(f"{path}: not an okkhor checkpoint (no '{key}')")
    try:
        cfg = config_from_dict(ckpt["config"])
        targets = Targets.from_dict(ckpt["targets"])
    except OkkhorError as exc:
        raise OkkhorError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OkkhorError(f"{path}: not an okkhor checkpoint (bad config or targets: "
                          f"{exc.__class__.__name__}: {exc})") from None
    mcfg = ModelConfig(**{**cfg.model.__dict__, "pretrained": False})
    weights = ckpt.get("ema") or ckpt["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise OkkhorError(f"{path}: not an okkhor checkpoint (its weights are not a dict of tensors)")
    try:
        model = build_model(mcfg, targets, weights.get("grapheme_classes"))
    except (OkkhorError, ValueError) as exc:
        raise OkkhorError(f"{path}: {exc}") from None
    mismatch = _weights_mismatch(model, weights)
    if mismatch:
        heads = ", ".join(f"{n} ({c})" for n, c in zip(targets.names, targets.num_classes, strict=False))
        raise OkkhorError(f"{path}: its weights do not fit the model its config describes (model.name "
                          f"{cfg.model.name}, targets {heads}): {mismatch} tensors")
    model.load_state_dict(weights)
    model.eval()
    return model, cfg, targets, ckpt
