"""Start the app on uvicorn: the models checked and the port tried first, one process or several workers."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

from okkhor.errors import OkkhorError
from okkhor.inference.serve.batcher import MAX_BATCH, MAX_WAIT_S

ENV = "OKKHOR_SERVE"          # the settings, as JSON, for the worker processes of --workers N
MAX_CONNECTIONS = 256         # open connections at once (uvicorn answers 503 beyond): bounds the bodies in memory
LOG_FORMAT = "okkhor serve: %(message)s"


@dataclass
class Settings:
    """What `okkhor serve` was asked for: enough to build the same app again in a worker process."""

    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    tta: int = 1
    workers: int = 1
    device: str = "auto"
    class_map: str = ""
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_S * 1000
    access_log: bool = True

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise OkkhorError(f"--port {self.port}: must be in 0..65535")
        if self.workers < 1:
            raise OkkhorError(f"--workers {self.workers}: must be >= 1")
        if self.max_batch < 1:
            raise OkkhorError(f"--max-batch {self.max_batch}: must be >= 1")
        if not 0 <= self.max_wait_ms <= 1000:
            raise OkkhorError(f"--max-wait-ms {self.max_wait_ms}: must be in 0..1000")


def _log_setup() -> None:
    logger = logging.getLogger("okkhor.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def build_app(settings: Settings):
    """Load the models and make the app (the one process of --workers 1, or each worker of several)."""
    from okkhor.inference.serve.app import create_app
    from okkhor.inference.serve.recogniser import load_recogniser

    _log_setup()
    recogniser = load_recogniser(settings.models, settings.device, settings.tta, settings.class_map or None)
    return create_app(recogniser, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000)


def app_from_environment():
    """uvicorn's factory in each worker process of --workers N: the settings come in $OKKHOR_SERVE; the CPU
    threads are shared out so that the workers do not oversubscribe the cores."""
    import torch

    settings = Settings(**json.loads(os.environ[ENV]))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    return build_app(settings)


def _check_port(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise OkkhorError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def serve(settings: Settings, log: Callable[[str], None] = print) -> None:
    """Check the settings and the models, then serve until Ctrl-C."""
    import uvicorn

    settings.check()
    app = build_app(settings)   # the models load (or fail, in one line) before the port is taken
    _check_port(settings.host, settings.port)
    recogniser = app.state.recogniser
    names = ", ".join(f"{n} ({c})" for n, c in zip(recogniser.targets.names, recogniser.targets.num_classes,
                                                  strict=True))
    log(f"okkhor serve: {len(recogniser.members)} model(s), {names}, tta {settings.tta}; "
        f"http://{settings.host}:{settings.port}/ (Ctrl-C stops)")
    common = {"host": settings.host, "port": settings.port, "access_log": settings.access_log,
              "limit_concurrency": MAX_CONNECTIONS, "log_level": "info"}
    if settings.workers == 1:
        uvicorn.run(app, **common)
        return
    app.state.batcher.close()   # the parent only checked; each worker loads its own copy
    os.environ[ENV] = json.dumps(asdict(settings))
    uvicorn.run("okkhor.inference.serve.server:app_from_environment", factory=True, workers=settings.workers,
                **common)
