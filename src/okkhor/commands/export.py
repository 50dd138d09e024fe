"""`okkhor export`: a checkpoint as an ONNX model."""
from __future__ import annotations

from pathlib import Path

import typer


def command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to export (EMA weights when present)."),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare with torch through onnxruntime."),
) -> None:
    """Export a checkpoint to ONNX, one logits output per target (named after it), dynamic batch axis.

    Input `image`: float32, batch x 1 x H x W, in 0..1, bright ink on black, as `okkhor prepare` makes it
    (H x W = the checkpoint's data.image_size; H = W = S for a square size). Needs the optional extra:
    pip install 'okkhor\\[export]'.

    Examples:
      okkhor export runs/r1/checkpoints/best.pt --onnx model.onnx
      okkhor export best.pt --onnx model.onnx --opset 18 --no-check
    """
    from okkhor.inference.export import export_onnx

    result = export_onnx(checkpoint, onnx, opset=opset, check=check)
    checked = (f"; max |onnx - torch| = {result['max_abs_diff']:.1e}" if result["max_abs_diff"] is not None
               else "; not checked")
    h, w = result["image_size"]
    typer.echo(f"wrote {result['out']}: outputs {', '.join(result['outputs'])}, input [batch, 1, {h}, {w}]{checked}")
