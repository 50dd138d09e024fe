"""okkhor export: ONNX with one output per target and a dynamic batch axis, equal to torch within 1e-4."""
from __future__ import annotations

import sys

import numpy as np
import torch

from helpers import assert_one_line_error, cli, make_checkpoint
from okkhor.models.model import load_for_inference


def test_onnx_matches_torch(tiny_kaggle_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    data = tiny_kaggle_dir()
    ckpt = make_checkpoint(tmp_path / "c.pt", data.root, seed=5, image_size=32)
    code, out = cli("export", ckpt, "--onnx", tmp_path / "m.onnx")
    assert code == 0, out
    assert "max |onnx - torch|" in out
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.name for o in graph.graph.output] == list(data.names)
    assert {p.key for p in graph.metadata_props} >= {"okkhor.targets", "okkhor.image_size", "okkhor.crop"}
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    model, *_ = load_for_inference(ckpt)
    for batch in (1, 7):   # the batch axis is dynamic
        x = np.random.default_rng(batch).random((batch, 1, 32, 32), dtype=np.float32)
        got = session.run(list(data.names), {"image": x})
        with torch.no_grad():
            want = model(torch.from_numpy(x))
        for g, w, n in zip(got, want, data.num_classes, strict=False):
            assert g.shape == (batch, n)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_missing_onnx_names_the_extra(tiny_kaggle_dir, tmp_path, monkeypatch):
    data = tiny_kaggle_dir()
    ckpt = make_checkpoint(tmp_path / "c.pt", data.root)
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` now raises ImportError
    assert_one_line_error(*cli("export", ckpt, "--onnx", tmp_path / "m.onnx"), "okkhor[export]")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(*cli("export", tmp_path / "none.pt", "--onnx", tmp_path / "m.onnx"),
                          "checkpoint not found")
