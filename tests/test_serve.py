"""okkhor serve: answers equal okkhor predict's on imported images, batching, bad input (4xx, one line), ONNX."""
from __future__ import annotations

import base64
import io
import logging
import os
import socket
import sys
import threading

import cv2
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'okkhor[serve]'")

from fastapi.testclient import TestClient  # noqa: E402  (after the extra's check)

from helpers import assert_one_line_error, cli, make_checkpoint  # noqa: E402
from okkhor.config import Config  # noqa: E402
from okkhor.inference.predict import raw_probs  # noqa: E402
from okkhor.inference.serve.app import MAX_IMAGES, MAX_UPLOAD_BYTES, create_app  # noqa: E402
from okkhor.inference.serve.batcher import Batcher, Busy  # noqa: E402
from okkhor.inference.serve.recogniser import MAX_IMAGE_PIXELS, Recogniser, load_recogniser, read_page  # noqa: E402
from okkhor.io.kaggle import iter_image_parquet  # noqa: E402
from okkhor.io.labels import load_targets  # noqa: E402
from okkhor.models.graphemes import GRAPHEME  # noqa: E402
from okkhor.models.model import build_model  # noqa: E402
from okkhor.targets import Targets  # noqa: E402


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def served(tiny_kaggle_dir, tmp_path_factory):
    """A tiny data set, a checkpoint, its test images as raw pages, and a client of the app over it."""
    data = tiny_kaggle_dir()
    tmp = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(tmp / "c.pt", data.root, seed=3)
    (_, raw), = list(iter_image_parquet(data.root / "test_image_data_0.parquet"))
    app = create_app(load_recogniser([ckpt], "cpu"))
    with TestClient(app) as client:
        yield data, tmp, ckpt, raw, client


def uploads(raw: np.ndarray) -> list[tuple[str, bytes]]:
    """Files of other sizes and kinds made from the tiny pages: as is, 2x larger, light on dark and smaller, a
    JPEG, a colour PNG."""
    big = cv2.resize(raw[1], (472, 274), interpolation=cv2.INTER_LINEAR)
    small_inverted = 255 - cv2.resize(raw[2], (150, 87), interpolation=cv2.INTER_AREA)
    return [("0.png", png(raw[0])), ("1.png", png(big)), ("2.png", png(small_inverted)),
            ("3.jpg", cv2.imencode(".jpg", raw[3], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()),
            ("4.png", png(cv2.cvtColor(raw[4], cv2.COLOR_GRAY2BGR)))]


def test_answers_equal_okkhor_predict_on_the_imported_images(served):
    """The same files through `okkhor import` + `okkhor predict --probs` and through POST /predict (multipart
    and JSON) give the same labels, and the top-5 probabilities within 1e-5."""
    data, tmp, ckpt, raw, client = served
    files = uploads(raw)
    folder = tmp / "images" / "a"
    folder.mkdir(parents=True)
    for name, content in files:
        (folder / name).write_bytes(content)
    pd.DataFrame({"folder": ["a"], **{n: [0] for n in data.names}}).to_csv(tmp / "map.csv", index=False)
    code, out = cli("import", tmp / "images", tmp / "imported", "--labels", tmp / "map.csv", "--split", "test",
                    "--class-map", data.root / "class_map.csv", "--no-progress")
    assert code == 0 and "inverted 1" in out, out
    code, out = cli("predict", ckpt, "--data", tmp / "imported", "--out", tmp / "s.csv", "--probs", tmp / "p.npz")
    assert code == 0, out
    want = np.load(tmp / "p.npz")
    assert want["image_ids"].tolist() == [f"Test_{i}" for i in range(len(files))]   # the files' sorted order

    multipart = client.post("/predict", files=[("files", (n, c, "image/png")) for n, c in files])
    assert multipart.status_code == 200, multipart.text
    got = multipart.json()["predictions"]
    assert len(got) == len(files)
    components = load_targets(data.root).components
    for i, answer in enumerate(got):
        for name, n in zip(data.names, data.num_classes, strict=True):
            p = want[name][i]
            assert answer[name]["label"] == int(p.argmax())
            assert answer[name]["text"] == components[name][answer[name]["label"]]
            top = answer[name]["top"]
            assert [k for k, _ in top] == np.argsort(-p, kind="stable")[:min(5, n)].tolist()
            np.testing.assert_allclose([q for _, q in top], p[[k for k, _ in top]], atol=1e-5, rtol=0)
        assert answer["grapheme"] == "".join(answer[n]["text"] for n in data.names)
        assert "seen_score" not in answer   # no grapheme head
    for i, (_, content) in enumerate(files):   # one JSON request per image: the same answers
        single = client.post("/predict", json={"images": [base64.b64encode(content).decode()]})
        assert single.status_code == 200, single.text
        (answer,) = single.json()["predictions"]
        assert [answer[n]["label"] for n in data.names] == [got[i][n]["label"] for n in data.names]
        np.testing.assert_allclose(answer[data.names[0]]["top"], got[i][data.names[0]]["top"], atol=1e-5)


def test_health_and_model(served):
    data, _, ckpt, _, client = served
    assert client.get("/health").json()["status"] == "ok"
    model = client.get("/model").json()
    assert [(t["name"], t["classes"]) for t in model["targets"]] == list(zip(data.names, data.num_classes,
                                                                             strict=True))
    assert model["targets"][0]["components"] == list(load_targets(data.root).components[data.names[0]])
    assert model["models"] == [{"file": str(ckpt), "format": "checkpoint"}]
    assert model["image_size"] == [[32, 32]] and model["crop"] == [True] and model["page"] == [137, 236]
    assert model["class_map"] == str(data.root / "class_map.csv") and model["okkhor_version"]
    assert model["limits"] == {"max_upload_bytes": MAX_UPLOAD_BYTES, "max_images": MAX_IMAGES,
                               "max_image_pixels": MAX_IMAGE_PIXELS}
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")   # nothing from elsewhere: the page works offline
    assert client.get("/static/page.js").status_code == 200


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (20, 20), 0).save(out, format="GIF")
    return out.getvalue()


def _bad_requests(raw: np.ndarray) -> list[tuple[str, dict, int, str]]:
    good = png(raw[0])
    huge = png(np.zeros((4097, 4096), np.uint8))
    form = lambda *parts: {"files": [("files", p) for p in parts]}  # noqa: E731

    def chunked():   # no Content-Length: the limit is applied while the body arrives
        for _ in range(MAX_UPLOAD_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)

    return [
        ("not an image", form(("notes.txt", b"hello, world", "text/plain")), 422, "not a PNG or JPEG image"),
        ("empty file", form(("e.png", b"", "image/png")), 422, "empty file"),
        ("blank image", form(("b.png", png(np.full((137, 236), 250, np.uint8)), "image/png")), 422, "blank image"),
        ("truncated", form(("t.png", good[:len(good) // 2], "image/png")), 422, "cannot be decoded"),
        ("gif", form(("g.gif", _gif(), "image/gif")), 415, "a GIF image"),
        ("huge image", form(("h.png", huge, "image/png")), 413, "4096x4097 pixels is over the limit"),
        ("too many", form(*[(f"{i}.png", good, "image/png") for i in range(MAX_IMAGES + 1)]), 413,
         f"{MAX_IMAGES + 1} images in one request"),
        ("body too large", {"content": b"x" * (MAX_UPLOAD_BYTES + 1),
                            "headers": {"content-type": "multipart/form-data; boundary=x"}}, 413, "over the limit"),
        ("chunked too large", {"content": chunked(), "headers": {"content-type": "application/json"}}, 413,
         "over the limit"),
        ("wrong content type", {"content": good, "headers": {"content-type": "text/plain"}}, 415,
         "content type text/plain"),
        ("no content type", {"content": good}, 415, "content type (none)"),
        ("no images", {"files": [("other", ("a.png", good, "image/png"))]}, 400, "no images"),
        ("text field", {"data": {"files": "abc"}, "files": [("x", ("a.png", good, "image/png"))]}, 422,
         "a text field"),
        ("bad json", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "JSON body"),
        ("json without images", {"json": {"imgs": []}}, 400, "expected {\"images\""),
        ("bad base64", {"json": {"images": ["@@not base64@@"]}}, 422, "images[0]: not valid base64"),
        ("json not a string", {"json": {"images": [3]}}, 422, "expected a base64 string"),
        ("json too many", {"json": {"images": [""] * (MAX_IMAGES + 1)}}, 413, "images in one request"),
    ]


def test_bad_input_is_one_json_line_and_the_server_keeps_serving(served, caplog):
    _, _, _, raw, client = served
    caplog.set_level(logging.WARNING, logger="okkhor.serve")
    cases = _bad_requests(raw)
    for what, request, status, needle in cases:
        caplog.clear()
        response = client.post("/predict", **request)
        assert response.status_code == status, (what, response.status_code, response.text)
        body = response.json()
        assert list(body) == ["error"] and needle in body["error"], (what, body)
        assert "\n" not in body["error"] and "Traceback" not in response.text, what
        lines = [r.getMessage() for r in caplog.records if r.name == "okkhor.serve"]
        assert len(lines) == 1 and f"POST /predict {status}: " in lines[0], (what, lines)
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/predict", files=[("files", ("ok.png", png(raw[0]), "image/png"))]).status_code == 200
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_a_failing_forward_is_a_500_without_traceback_and_the_server_goes_on(served):
    _, _, ckpt, raw, _ = served
    recogniser = load_recogniser([ckpt], "cpu")
    good = recogniser.predict
    calls = []

    def flaky(pages):
        calls.append(len(pages))
        if len(calls) == 1:
            raise RuntimeError("out of memory, say")
        return good(pages)

    recogniser.predict = flaky
    with TestClient(create_app(recogniser), raise_server_exceptions=False) as client:
        request = {"files": [("files", ("a.png", png(raw[0]), "image/png"))]}
        failed = client.post("/predict", **request)
        assert failed.status_code == 500 and failed.json() == {"error": "internal error (see the server log)"}
        assert "Traceback" not in failed.text and "out of memory" not in failed.text
        assert client.post("/predict", **request).status_code == 200


def test_read_page_is_import_s_conversion():
    """A light-on-dark image of any size comes out inverted onto the 137x236 page, as okkhor import writes it."""
    from okkhor.sources.imagefolder import to_page

    img = np.zeros((300, 300), np.uint8)
    cv2.circle(img, (150, 150), 80, 255, 12)
    page = read_page(png(img), "circle")
    assert page.shape == (137, 236) and page.dtype == np.uint8
    np.testing.assert_array_equal(page, to_page(img)[0])
    assert page[0, 0] > 200   # the background came out light


def test_batcher_shares_forward_passes_and_never_splits_a_request():
    sizes = []

    def fn(pages):
        sizes.append(len(pages))
        return [int(p[0, 0]) for p in pages]

    batcher = Batcher(fn, max_batch=4, max_wait=0.25)
    try:
        futures = [batcher.submit(np.full((1, 2, 2), i, np.uint8)) for i in range(6)]
        assert [f.result(5) for f in futures] == [[i] for i in range(6)]   # each request its own answers
        assert sizes == [4, 2] and batcher.forwards == 2 and batcher.images == 6 and batcher.largest == 4
        sizes.clear()
        futures = [batcher.submit(np.full((3, 2, 2), i, np.uint8)) for i in range(2)]
        assert [f.result(5) for f in futures] == [[0] * 3, [1] * 3]
        assert sizes == [3, 3]   # 3 + 3 > 4: the second waits for the next pass
    finally:
        batcher.close()


def test_batcher_survives_a_failing_forward_and_bounds_its_queue():
    release = threading.Event()
    calls = []

    def fn(pages):
        calls.append(len(pages))
        release.wait(5)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(range(len(pages)))

    batcher = Batcher(fn, max_batch=2, max_wait=0.0, max_queued=4)
    try:
        first = batcher.submit(np.zeros((2, 1, 1), np.uint8))
        second = batcher.submit(np.zeros((2, 1, 1), np.uint8))
        with pytest.raises(Busy, match="4 images queued"):
            batcher.submit(np.zeros((1, 1, 1), np.uint8))
        release.set()
        with pytest.raises(RuntimeError, match="boom"):
            first.result(5)
        assert second.result(5) == [0, 1] and batcher.queued == 0
    finally:
        batcher.close()


def test_concurrent_requests_share_a_forward_pass(served):
    data, _, ckpt, raw, _ = served
    app = create_app(load_recogniser([ckpt], "cpu"), max_wait=0.3)
    n = 6
    codes = []
    with TestClient(app) as client:
        def post(i):
            codes.append(client.post("/predict", files=[("files", ("a.png", png(raw[i]), "image/png"))])
                         .status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = client.get("/health").json()
    assert codes == [200] * n
    assert health["images"] == n and health["forwards"] < n and health["largest_batch"] >= 2, health


def test_onnx_files_serve_the_same_answers(served):
    pytest.importorskip("onnxruntime")
    from okkhor.inference.export import export_onnx

    data, tmp, ckpt, raw, _ = served
    onnx = export_onnx(ckpt, tmp / "m.onnx", check=False)["out"]
    pages = raw[:4]
    torch_answers = load_recogniser([ckpt], "cpu").predict(pages)
    for paths in ([onnx], [ckpt, onnx]):
        recogniser = load_recogniser(paths, "cpu")
        assert [m.meta.get("format", "checkpoint") for m in recogniser.members] == \
            ["checkpoint"] * (len(paths) - 1) + ["onnx"]
        for got, want in zip(recogniser.predict(pages), torch_answers, strict=True):
            for name in data.names:
                assert got[name]["label"] == want[name]["label"]
                np.testing.assert_allclose(got[name]["top"], want[name]["top"], atol=1e-4)
    bad = tmp / "other.onnx"
    bad.write_bytes(b"not a graph")
    code, out = cli("serve", bad)
    assert_one_line_error(code, out, "other.onnx", "cannot be loaded by onnxruntime")


def test_seen_score_only_with_a_grapheme_head(served, tmp_path):
    import torch

    data, _, _, raw, _ = served
    targets = load_targets(data.root)
    classes = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 0]])
    cfg = Config()
    cfg.data.image_size, cfg.model.name, cfg.model.grapheme_head = 32, "test_resnet", True
    torch.manual_seed(1)
    model = build_model(cfg.model, targets, classes)
    torch.save({"config": cfg.to_dict(), "targets": targets.to_dict(), "model": model.state_dict(), "ema": None},
               tmp_path / "head.pt")
    recogniser = load_recogniser([tmp_path / "head.pt"], "cpu")
    assert recogniser.grapheme_head and recogniser.describe()["grapheme_head"]
    answers = recogniser.predict(raw[:3])
    want = raw_probs(recogniser.members, raw[:3])[GRAPHEME].max(axis=1)
    np.testing.assert_allclose([a["seen_score"] for a in answers], want, atol=1e-6)


def test_component_texts_and_grapheme_strings():
    """Bengali labels read as the class map's letters and the composed grapheme; other targets join their texts
    and leave out a "0" (no diacritic)."""
    from okkhor.bengali import grapheme_string

    bengali = Targets.from_class_map()
    probs = {n: np.full((1, c), 0.1 / c, np.float32) for n, c in zip(bengali.names, bengali.num_classes,
                                                                      strict=True)}
    for name, label in zip(bengali.names, (15, 2, 0), strict=True):
        probs[name][0, label] = 0.9
    (answer,) = Recogniser([], bengali).answers(probs)
    assert answer["grapheme"] == grapheme_string(15, 2, 0)
    assert answer["grapheme_root"]["text"] == bengali.components["grapheme_root"][15]
    assert answer["grapheme_root"]["top"][0] == [15, pytest.approx(0.9, abs=1e-6)]
    assert len(answer["grapheme_root"]["top"]) == 5
    other = Targets.make(["a", "b"], [2, 2], components={"a": ("x", "y"), "b": ("0", "z")})
    texts = Recogniser([], other).answers({"a": np.array([[0.2, 0.8]]), "b": np.array([[0.7, 0.3]])})[0]
    assert texts["grapheme"] == "y" and texts["b"]["text"] == "0"


def test_cli_errors_are_one_line(served, tmp_path, monkeypatch):
    _, _, ckpt, _, _ = served
    assert_one_line_error(*cli("serve", tmp_path / "none.pt"), "none.pt")
    assert_one_line_error(*cli("serve", ckpt, "--tta", 9), "--tta 9")
    assert_one_line_error(*cli("serve", ckpt, "--workers", 0), "--workers 0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(*cli("serve", ckpt, "--port", port), f"--port {port}", "cannot listen")
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert_one_line_error(*cli("serve", ckpt), "okkhor serve needs the optional extra 'serve'", "okkhor[serve]")


def test_cli_serves_on_localhost_by_default(served, monkeypatch):
    """`okkhor serve` loads the models, then hands uvicorn an app bound to 127.0.0.1 (one process) or a factory
    that builds the same app in each worker (--workers N)."""
    import torch
    import uvicorn

    from okkhor.inference.serve.server import ENV, app_from_environment

    _, _, ckpt, raw, _ = served
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append((app, kwargs)))
    monkeypatch.setenv(ENV, "")   # restored (removed) after the test
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)   # recorded, not changed in this process
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = cli("serve", ckpt, "--port", port, "--tta", 2)
    assert code == 0 and f"http://127.0.0.1:{port}/" in out and "tta 2" in out, out
    (app, kwargs), = runs
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == port
    with TestClient(app) as client:
        assert client.get("/model").json()["tta"] == 2
        assert client.post("/predict", files=[("files", ("a.png", png(raw[0]), "image/png"))]).status_code == 200

    code, out = cli("serve", ckpt, "--port", port, "--workers", 2, "--host", "localhost")
    assert code == 0, out
    target, kwargs = runs[-1]
    assert target == "okkhor.inference.serve.server:app_from_environment" and kwargs["factory"]
    assert kwargs["workers"] == 2 and kwargs["host"] == "localhost"
    with TestClient(app_from_environment()) as client:   # what each worker builds from $OKKHOR_SERVE
        assert client.get("/model").json()["models"][0]["file"] == str(ckpt)
    assert threads == [max(1, (os.cpu_count() or 1) // 2)]   # each worker's share of the cores
