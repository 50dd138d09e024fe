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

    When the truth file has a boolean `seen` column, the seen and unseen rows are also scored separately.

    Examples:
      okkhor score --truth data/test_labels.csv --submission submission.csv
      okkhor score --truth data/test_labels.csv --submission submission.csv --json
    """
    from okkhor.scoring import score_submission

    result = score_submission(truth, submission, class_map)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"score {result['score']:.5f}")
    for name, r in result["recall"].items():
        typer.echo(f"  recall {name}: {r:.5f}")
    for part, value in result.get("by_seen", {}).items():
        typer.echo(f"  {part}: {value:.5f}" if value is not None else f"  {part}: (no rows)")
