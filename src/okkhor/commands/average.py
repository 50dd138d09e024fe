"""`okkhor average`: average the weights of checkpoints into one checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def command(
    checkpoints: List[Path] = typer.Argument(..., help="Checkpoints of the same model and targets (e.g. a run's "
                                                       "top-*.pt, or the folds of a cv run)."),
    out: Path = typer.Option(..., "--out", help="The averaged checkpoint to write (.pt)."),
    bn_data: Optional[Path] = typer.Option(None, "--bn-data", help="Recompute the batch-norm statistics on this "
                                                                   "data dir's training images (else they are "
                                                                   "averaged with the weights)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress while preparing data."),
) -> None:
    """Average checkpoints' weights (their EMA weights where kept) with torch's swa_utils; the result works
    with predict, evaluate and export.

    Examples:
      okkhor average runs/b0/checkpoints/top-*.pt --out runs/b0/avg.pt
      okkhor average runs/b0/checkpoints/top-*.pt --out avg.pt --bn-data data/
    """
    from okkhor.training.average import average_checkpoints

    result = average_checkpoints(checkpoints, out, bn_data=bn_data, log=typer.echo, show_progress=progress)
    bn = ", batch norm recomputed on the training images" if result["bn"] else ""
    typer.echo(f"wrote {result['out']}: the average of {result['checkpoints']} checkpoint(s){bn}")
