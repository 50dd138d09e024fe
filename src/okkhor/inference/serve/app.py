"""The FastAPI app: POST /predict, GET /health and /model, the page at /; every bad request is one JSON line."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

import okkhor
from okkhor.inference.serve.batcher import MAX_BATCH, MAX_QUEUED, MAX_WAIT_S, Batcher, Busy
from okkhor.inference.serve.recogniser import MAX_IMAGE_PIXELS, BadInput, Recogniser, read_page

MAX_UPLOAD_BYTES = 8 << 20     # one request's body (8 MiB); more is refused with 413 while it is read
MAX_IMAGES = 32                # images in one request (413 beyond)
MAX_FORM_FILES = 256           # parts the multipart parser takes before it gives up (400)
DECODE_THREADS = 4             # images decoded at once, all requests together: bounds the decoding memory
FIELD = "files"                # the multipart field of the images
DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,")
HOW = (f"send PNG or JPEG files in the multipart/form-data field '{FIELD}', or application/json "
       '{"images": [base64, ...]}')

log = logging.getLogger("okkhor.serve")


def static_dir() -> Path:
    """The page's files (index.html, page.js, page.css), shipped as package data."""
    return Path(str(resources.files("okkhor.inference.serve").joinpath("static")))


def _limited(receive, limit: int):
    """An ASGI receive that refuses (413) a body past `limit` bytes while it arrives."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BadInput(413, f"request body over the limit of {limit:,} bytes")
        return message
    return wrapped


async def _form_images(request: Request) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FILES)
    except HTTPException as exc:   # starlette's one line for a malformed or oversized form
        raise BadInput(exc.status_code, f"multipart form: {exc.detail}") from None
    try:
        parts = form.getlist(FIELD)
        if len(parts) > MAX_IMAGES:
            raise BadInput(413, f"{len(parts)} images in one request; the limit is {MAX_IMAGES}")
        images = []
        for i, part in enumerate(parts):
            if isinstance(part, str):
                raise BadInput(422, f"{FIELD}[{i}]: a text field, not a file")
            images.append((f"{FIELD}[{i}] ({part.filename})", await part.read()))
        return images
    finally:
        await form.close()


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(400, f"JSON body: {exc}") from None
    items = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BadInput(400, 'JSON body: expected {"images": [base64, ...]}')
    if len(items) > MAX_IMAGES:
        raise BadInput(413, f"{len(items)} images in one request; the limit is {MAX_IMAGES}")
    images = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise BadInput(422, f"images[{i}]: expected a base64 string, got {type(item).__name__}")
        try:
            images.append((f"images[{i}]", base64.b64decode(DATA_URL.sub("", item, count=1), validate=True)))
        except (binascii.Error, ValueError):
            raise BadInput(422, f"images[{i}]: not valid base64") from None
    return images


async def read_request_pages(request: Request, limiter: anyio.CapacityLimiter) -> np.ndarray:
    """The pages uint8 [n, 137, 236] of a /predict request (multipart or JSON), or BadInput."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
        raise BadInput(413, f"request body of {int(length):,} bytes is over the limit of {MAX_UPLOAD_BYTES:,}")
    limited = Request(request.scope, _limited(request.receive, MAX_UPLOAD_BYTES))
    if kind == "multipart/form-data":
        images = await _form_images(limited)
    elif kind == "application/json":
        images = _json_images(await limited.body())
    else:
        raise BadInput(415, f"content type {kind or '(none)'}: {HOW}")
    if not images:
        raise BadInput(400, f"no images: {HOW}")

    def decode() -> np.ndarray:
        return np.stack([read_page(data, name) for name, data in images])

    return await anyio.to_thread.run_sync(decode, limiter=limiter)


@lru_cache(maxsize=1)
def bengali_font() -> Path | None:
    """A font file with every Bengali glyph, from the synth extra's font packages (None without them)."""
    import importlib.util

    if importlib.util.find_spec("freetype") is None or importlib.util.find_spec("uharfbuzz") is None:
        return None
    from okkhor.sources.synth.fonts import DEFAULT_FONT, discover_fonts

    fonts = discover_fonts()[0]
    chosen = next((f for f in fonts if f.name == DEFAULT_FONT), fonts[0] if fonts else None)
    return chosen.path if chosen else None


def _error(request: Request, status: int, message: str) -> JSONResponse:
    log.warning("%s %s %d: %s", request.method, request.url.path, status, message)
    return JSONResponse({"error": message}, status_code=status)


def _answer_errors(app: FastAPI) -> None:
    """Every refusal as one JSON line {"error": ...} with its status, logged in one line; an unexpected failure is
    a 500 whose traceback stays in the server's log."""

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput):
        return _error(request, exc.status, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return _error(request, 503, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return _error(request, 422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("%s %s 500: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"error": "internal error (see the server log)"}, status_code=500)


def create_app(recogniser: Recogniser, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT_S,
               max_queued: int = MAX_QUEUED) -> FastAPI:
    """The app over one recogniser; its batcher runs every forward pass (`app.state.batcher`)."""
    batcher = Batcher(recogniser.predict, max_batch=max_batch, max_wait=max_wait, max_queued=max_queued)
    limiter = anyio.CapacityLimiter(DECODE_THREADS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="okkhor", version=okkhor.__version__, lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.recogniser, app.state.batcher = recogniser, batcher
    static = static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    _answer_errors(app)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(static / "index.html")

    @app.get("/font", include_in_schema=False)
    async def font():
        path = bengali_font()
        if path is None:
            raise HTTPException(404, "no Bengali font installed (pip install 'okkhor[synth]')")
        return FileResponse(path)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "forwards": batcher.forwards, "images": batcher.images,
                "largest_batch": batcher.largest, "queued": batcher.queued}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        limits = {"max_upload_bytes": MAX_UPLOAD_BYTES, "max_images": MAX_IMAGES,
                  "max_image_pixels": MAX_IMAGE_PIXELS}
        batching = {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait * 1000,
                    "max_queued": batcher.max_queued}
        return {**recogniser.describe(), "limits": limits, "batching": batching}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        pages = await read_request_pages(request, limiter)
        answers = await asyncio.wrap_future(batcher.submit(pages))
        return JSONResponse({"predictions": answers})   # plain JSON types already: no response model to apply

    return app
