"""ONNX export: one output per target, a dynamic batch axis, checked against torch with onnxruntime."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from okkhor.errors import OkkhorError
from okkhor.models.graphemes import GRAPHEME
from okkhor.utils.files import atomic_path, check_writable
from okkhor.utils.sizes import hw, size_text

INPUT_NAME = "image"
OPSET = 17
ATOL = 1e-4
EXTRA_HINT = "pip install 'okkhor[export]'"


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise OkkhorError(f"okkhor export needs the optional extra 'export' (onnx, onnxruntime): {EXTRA_HINT}") \
            from None
    return onnx


def max_abs_diff(onnx_path: str | Path, model, x: np.ndarray, names: tuple[str, ...]) -> float:
    """Largest |onnxruntime - torch| over every output for the input batch x (float32 [n, 1, H, W])."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: x}), strict=False))
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    return max(float(np.abs(got[name] - w.numpy()).max()) for name, w in zip(names, want, strict=False))


def export_onnx(ckpt: str | Path, out: str | Path, opset: int = OPSET, check: bool = True,
                atol: float = ATOL) -> dict[str, Any]:
    """Export a checkpoint (EMA weights when present) to ONNX, written atomically.

    The graph takes `image`: float32 [batch, 1, H, W] in [0, 1], bright ink on black, i.e. the raw image through
    okkhor.data.prepare.preprocess(size=(H, W), crop) and divided by 255 (H = W = S for a square
    data.image_size); it returns one logits output per target, named after the target. The metadata records the
    targets and the preprocessing. With `check` (and onnxruntime installed) the outputs are compared with torch on
    a random batch and must agree within `atol`.
    Returns {"out", "outputs", "image_size" ((H, W)), "crop", "max_abs_diff" (None when not checked)}.
    """
    onnx = _require_onnx()
    import torch

    from okkhor.models.model import load_for_inference

    out = check_writable(out, "--onnx")
    model, cfg, targets, _ = load_for_inference(ckpt, map_location="cpu")
    (h, w), names = hw(cfg.data.image_size), tuple(targets.names)
    if INPUT_NAME in names or GRAPHEME in names:
        raise OkkhorError(f"{ckpt}: a target is named '{INPUT_NAME}' or '{GRAPHEME}', a name the ONNX graph uses")
    classes = getattr(model, "grapheme_classes", None)
    if classes is not None:  # the auxiliary head is one more output; its triples go into the metadata
        names = (*names, GRAPHEME)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *names)}
    with atomic_path(out, suffix=".onnx") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the TorchScript exporter announces its deprecation and traces
            torch.onnx.export(model, (torch.rand(2, 1, h, w),), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(names), dynamic_axes=axes, opset_version=opset, dynamo=False)
        graph = onnx.load(str(tmp))
        meta = {"okkhor.targets": json.dumps(targets.to_dict()), "okkhor.image_size": size_text((h, w)),
                "okkhor.crop": json.dumps(cfg.data.crop),
                "okkhor.input": f"float32 [batch,1,{h},{w}] in [0,1], bright ink on black "
                                "(okkhor prepare preprocessing)"}
        if classes is not None:
            meta["okkhor.grapheme_classes"] = json.dumps(classes.tolist())
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
        diff = None
        if check:
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                check = False
        if check:
            x = np.random.default_rng(0).random((3, 1, h, w), dtype=np.float32)
            diff = max_abs_diff(tmp, model, x, names)
            if not diff <= atol:
                raise OkkhorError(f"{out}: ONNX outputs differ from torch by {diff:.2e} (> {atol:.0e}); "
                                  f"try another --opset")
    return {"out": out, "outputs": names, "image_size": (h, w), "crop": cfg.data.crop, "max_abs_diff": diff}
