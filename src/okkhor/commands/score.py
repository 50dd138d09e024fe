"""`okkhor score`: the competition metric on a submission."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def command(
    truth: Path = typer.Option(..., "--truth", help="CSV with image_id and one column per target."),
    submission: Path = typer.Option(..., "--submission", help="Kaggle submission: row_id,target."),
    class_map: Optional[Path] = typer.Option(None, "--class-map", help="class_map.csv (default: beside the truth "
                                                                      "file, else the built-in Bengali map)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score a submission with hierarchical macro recall (weights 2:1:1 for the Bengali targets).

    Also prints plain accuracy per target and the share of images with every target right (`exact`). When the
    truth file has boolean `seen` (label triple among the train graphemes) and/or `font_seen` (drawn in a training
    font) columns, every combination of them is scored separately (`--json`: `by_seen` and `by_cell`).

    Examples:
      okkhor score --truth data/test_labels.csv --submission submission.csv
      okkhor score --truth data/test_labels.csv --submission submission.csv --json
    """
    from okkhor.inference.scoring import score_submission

    result = score_submission(truth, submission, class_map)
    if as_json:
        typer.echo(json.dumps(result))
        return
    from okkhor.inference.scoring import format_summary

    for line in format_summary(result):
        typer.echo(line)
