"""What the server runs: okkhor checkpoints and exported ONNX files, as ensemble members of okkhor predict."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from okkhor.config import Config
from okkhor.errors import OkkhorError
from okkhor.inference.export import EXTRA_HINT, INPUT_NAME
from okkhor.inference.predict import Member, load_members
from okkhor.models.graphemes import GRAPHEME
from okkhor.targets import Targets
from okkhor.utils.sizes import parse_size

ONNX_SUFFIX = ".onnx"
ONNX_KEYS = ("okkhor.targets", "okkhor.image_size", "okkhor.crop")  # metadata okkhor export writes


class OnnxModel(torch.nn.Module):
    """An exported graph run by onnxruntime behind the module interface okkhor.inference.predict calls: float
    images [B, 1, H, W] in, one logits tensor per output (the targets, then the grapheme head's) out."""

    def __init__(self, session, outputs: Sequence[str], grapheme_classes: np.ndarray | None = None):
        super().__init__()
        self.session = session
        self.outputs = list(outputs)
        # empty: only tells ensemble_probs where the inputs go (onnxruntime takes them from host memory)
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)
        if grapheme_classes is not None:
            self.register_buffer("grapheme_classes", torch.as_tensor(grapheme_classes, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feed = {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()}
        return [torch.from_numpy(out) for out in self.session.run(self.outputs, feed)]


def load_onnx_member(path: str | Path) -> Member:
    """An ONNX file from `okkhor export` as an ensemble member (CPU, onnxruntime); its metadata gives the targets,
    the preprocessing and the grapheme head's classes."""
    path = Path(path)
    if importlib.util.find_spec("onnxruntime") is None:
        raise OkkhorError(f"{path}: running ONNX files needs the optional extra 'export' (onnxruntime): "
                          f"{EXTRA_HINT}")
    import onnxruntime as ort

    if not path.is_file():
        raise OkkhorError(f"{path}: ONNX file not found")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise OkkhorError(f"{path}: cannot be loaded by onnxruntime ({str(exc).splitlines()[0]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ONNX_KEYS if key not in meta]
    if missing:
        raise OkkhorError(f"{path}: not an okkhor export (metadata {', '.join(missing)} missing)")
    try:
        targets = Targets.from_dict(json.loads(meta["okkhor.targets"]))
        cfg = Config()
        cfg.data.image_size = parse_size(meta["okkhor.image_size"])
        cfg.data.crop = bool(json.loads(meta["okkhor.crop"]))
        classes = (np.asarray(json.loads(meta["okkhor.grapheme_classes"]), dtype=np.int64)
                   if "okkhor.grapheme_classes" in meta else None)
    except (ValueError, KeyError, TypeError) as exc:
        raise OkkhorError(f"{path}: bad okkhor metadata ({exc.__class__.__name__}: {exc})") from None
    outputs = [*targets.names, *([GRAPHEME] if classes is not None else [])]
    have = [o.name for o in session.get_outputs()]
    if [name for name in outputs if name not in have]:
        raise OkkhorError(f"{path}: outputs {', '.join(have)} do not match its targets {', '.join(outputs)}")
    return Member(path, OnnxModel(session, outputs, classes), cfg, targets, {"format": "onnx"})


def load_models(paths: Sequence[str | Path], device: str = "auto") -> list[Member]:
    """Checkpoints and ONNX files (by their .onnx suffix) as one ensemble; all must predict the same targets."""
    if not paths:
        raise OkkhorError("no model given (checkpoints or .onnx files)")
    onnx = [Path(p) for p in paths if Path(p).suffix.lower() == ONNX_SUFFIX]
    ckpts = [Path(p) for p in paths if Path(p).suffix.lower() != ONNX_SUFFIX]
    members = load_members(ckpts, device) if ckpts else []
    for path in onnx:
        member = load_onnx_member(path)
        first = members[0] if members else member
        if (member.targets.names, member.targets.num_classes) != (first.targets.names, first.targets.num_classes):
            raise OkkhorError(f"{path}: predicts {_describe(member.targets)} but {first.path} predicts "
                              f"{_describe(first.targets)}; an ensemble needs the same targets")
        members.append(member)
    return members


def _describe(targets: Targets) -> str:
    return ", ".join(f"{n} ({c})" for n, c in zip(targets.names, targets.num_classes, strict=True))
