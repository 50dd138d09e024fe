"""`okkhor report`: one offline HTML page about a training run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    run_dir: Path = typer.Argument(..., help="Run directory (config.yaml, metrics.csv, checkpoints/)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder (default: the data dir the checkpoint "
                                                             "records, else RUN_DIR/run.json's)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Evaluate on this labelled test set (image_id + "
                                                                 "one column per target, e.g. data/test_labels.csv; "
                                                                 "images from the test parquet files) instead of "
                                                                 "the validation fold."),
    gallery: int = typer.Option(48, "--gallery", help="Misclassified validation images shown at most."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda."),
) -> None:
    """Write RUN_DIR/report.html: training curves, recall per class (worst first), the most confused pairs and a
    gallery of misclassified validation images with the true and predicted graphemes drawn beside them.

    The page works offline; its images are in RUN_DIR/report/.

    Examples:
      okkhor report runs/r1
      okkhor report runs/r1 --data data/ --gallery 96
      okkhor report runs/r1 --data data/ --labels data/test_labels.csv
      okkhor report runs/cv        (an `okkhor cv` folder: one row per fold and the OOF score)
    """
    from okkhor.training.cv import cv_report_lines, is_cv_dir, write_cv_report

    if is_cv_dir(run_dir):
        for line in cv_report_lines(run_dir):
            typer.echo(line)
        typer.echo(f"wrote {write_cv_report(run_dir)}")
        return
    from okkhor.reporting.report import REPORT_DIR, write_report
    from okkhor.utils.files import check_writable

    if run_dir.is_dir():
        check_writable(run_dir / "report.html", "report")
        check_writable(run_dir / REPORT_DIR, "report folder", folder=True)
    path = write_report(run_dir, data_dir=data, gallery=gallery, device=device, labels=labels)
    typer.echo(f"wrote {path}")
