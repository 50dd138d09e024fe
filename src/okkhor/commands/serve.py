"""`okkhor serve`: an HTTP API and a page to write on, over checkpoints or ONNX files."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def command(
    models: List[Path] = typer.Argument(..., help="Checkpoints (an ensemble, as okkhor predict takes: files, run "
                                                  "directories, `okkhor cv` folders) and/or .onnx files from "
                                                  "okkhor export (run with onnxruntime)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    tta: int = typer.Option(1, "--tta", help="Views per image, 1..8, as okkhor predict's --tta."),
    workers: int = typer.Option(1, "--workers", help="Server processes, each with its own copy of the models "
                                                     "and a share of the CPU threads."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda."),
    class_map: Optional[Path] = typer.Option(None, "--class-map", help="class_map.csv of the component texts "
                                                                       "(default: the checkpoint's data dir's, "
                                                                       "else the built-in Bengali map)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Most images in one forward pass."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a request waits for others to "
                                                                 "share its forward pass."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
) -> None:
    """Serve a recogniser: POST /predict, GET /health, GET /model, and a page to write on at /.

    POST /predict takes PNG or JPEG images (multipart field `files`, or JSON {"images": [base64, ...]}) of any
    size; each is brought onto the 137x236 page as `okkhor import` does and predicted as `okkhor predict` does.
    Requests arriving within --max-wait-ms share one forward pass. Needs the optional extra:
    pip install 'okkhor\\[serve]' (and okkhor\\[export] for .onnx files).

    Examples:
      okkhor serve runs/r1/checkpoints/best.pt
      okkhor serve runs/cv --tta 4 --port 8080
      okkhor serve model.onnx --host 0.0.0.0 --workers 2
    """
    from okkhor.utils.extras import require

    require("serve", "okkhor serve")
    from okkhor.inference.serve.server import Settings, serve
    from okkhor.training.cv import checkpoints_of

    paths = [str(p) for path in models for p in checkpoints_of(path)]
    serve(Settings(models=paths, host=host, port=port, tta=tta, workers=workers, device=device,
                   class_map=str(class_map) if class_map else "", max_batch=max_batch, max_wait_ms=max_wait_ms,
                   access_log=access_log), log=typer.echo)
