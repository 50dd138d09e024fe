"""`okkhor train --init CKPT`: start a new run from a checkpoint's weights (its EMA weights when it kept them).

The optimizer, schedule and run state start fresh. The backbone must be the same timm model; the image size may
differ (the backbone is convolutional, its pooled features have the same width). The target heads are loaded
when the checkpoint predicts the same targets with the same class counts and re-initialised otherwise; the
auxiliary grapheme head likewise when its classes (the buffer `grapheme_classes`) are the same.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.models.model import GraphemeModel
from okkhor.targets import Targets

_HEADS = "heads."
_GRAPHEME = ("grapheme_head.", "grapheme_classes")


def _describe(targets: dict) -> str:
    pairs = zip(targets.get("names", []), targets.get("num_classes", []), strict=False)
    return ", ".join(f"{n} ({c})" for n, c in pairs)


def init_from(net: GraphemeModel, path: str | Path, model_name: str, targets: Targets,
              log: Callable[[str], None] = print) -> dict[str, bool]:
    """Load CKPT's weights into `net` (in place) as described above; returns {"heads": loaded?, "grapheme_head":
    loaded?}. A checkpoint of another backbone, or one that is not okkhor's, is one clear error."""
    path = Path(path)
    ckpt = checkpoint.load(path)
    checkpoint.require(ckpt, checkpoint.INFERENCE_KEYS, f"--init {path}")
    theirs = checkpoint.model_name(ckpt)
    if theirs != model_name:
        raise OkkhorError(f"--init {path}: a checkpoint of model.name {theirs}, but this run trains {model_name}; "
                          f"set model.name={theirs} (--model {theirs}) or start from a checkpoint of {model_name}")
    weights = checkpoint.inference_weights(ckpt, f"--init {path}")
    mine = net.state_dict()
    recorded = ckpt[checkpoint.TARGETS]
    same_targets = (list(recorded.get("names", [])) == list(targets.names)
                    and [int(c) for c in recorded.get("num_classes", [])] == list(targets.num_classes))
    ours_g, theirs_g = mine.get("grapheme_classes"), weights.get("grapheme_classes")
    same_graphemes = (ours_g is not None and theirs_g is not None and ours_g.shape == theirs_g.shape
                      and bool(torch.equal(ours_g.cpu(), theirs_g.cpu())))
    take = {}
    for key, value in weights.items():
        if key.startswith(_HEADS) and not same_targets:
            continue
        if key.startswith(_GRAPHEME) and not same_graphemes:
            continue
        if key not in mine:
            continue
        if tuple(value.shape) != tuple(mine[key].shape):
            raise OkkhorError(f"--init {path}: its weight {key} has shape {tuple(value.shape)}, this model's "
                              f"{tuple(mine[key].shape)} (another model.act, in_chans or timm version?)")
        take[key] = value
    backbone = [k for k in mine if k.startswith("backbone.")]
    missing = [k for k in backbone if k not in take]
    if missing:
        raise OkkhorError(f"--init {path}: its backbone lacks {len(missing)} of this model's weights (e.g. "
                          f"{missing[0]}); not a checkpoint of the same {model_name}")
    net.load_state_dict(take, strict=False)
    if not same_targets:
        log(f"train: --init {path}: targets differ ({_describe(recorded)} -> "
            f"{_describe(targets.to_dict())}); the target heads are re-initialised")
    if ours_g is not None and not same_graphemes:
        log(f"train: --init {path}: {'no grapheme head' if theirs_g is None else 'other grapheme classes'} in "
            "the checkpoint; the grapheme head is re-initialised")
    log(f"train: --init {path}: started from its {'EMA ' if checkpoint.has_ema(ckpt) else ''}weights "
        f"({len(take)} tensors); new optimizer and schedule")
    return {"heads": same_targets, "grapheme_head": same_graphemes}
