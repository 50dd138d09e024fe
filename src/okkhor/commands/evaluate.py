"""`okkhor evaluate`: a checkpoint on its validation fold or a labelled test set -> metrics.json and plots."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to evaluate."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder (train.csv, folds.csv and the train images; "
                                                            "or the test images with --labels). Default: the data "
                                                            "the checkpoint's run read."),
    source: Optional[str] = typer.Option(None, "--source", help="A checkpoint of several sources: evaluate this "
                                                                "source's fold (default: each source's)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Validation fold (default: the checkpoint's "
                                                            "data.fold)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with image_id and one column per target; "
                                                                 "its images come from the test parquet files."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN_DIR/eval-<checkpoint>/)."),
    tta: int = typer.Option(1, "--tta", help="TTA views, as in `okkhor predict`."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images predicted at a time."),
    prior_correction: bool = typer.Option(False, "--prior-correction/--no-prior-correction",
                                          help="Divide probabilities by the training class frequencies."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu or cuda."),
    route: bool = typer.Option(False, "--route/--no-route", help="Decide as `okkhor predict --route` does."),
    route_threshold: float = typer.Option(0.5, "--route-threshold", help="With --route: the grapheme head's "
                                                                         "probability needed to take its triple."),
) -> None:
    """Score a checkpoint and write metrics.json (score, recall and accuracy per target, exact share, recall per
    class, most confused pairs, a breakdown by the labels' `seen` / `font_seen` columns when present, and for a
    model with a grapheme head the AUROC of its seen score against the `seen` column),
    per-class recall and confusion plots (PNG), and truth.csv + submission.csv for `okkhor score`.

    Images of the validation fold come from the prepare cache at the checkpoint's preprocessing (built when
    missing).

    A checkpoint trained on several sources is evaluated on each one's validation fold (OUT/<source>/), or on the
    one --source names.

    Examples:
      okkhor evaluate runs/r1/checkpoints/best.pt --data data/
      okkhor evaluate runs/both/checkpoints/best.pt --source real
      okkhor evaluate best.pt --data data/ --fold 2 --out eval-fold2/
      okkhor evaluate best.pt --data data/ --labels data/test_labels.csv
    """
    from okkhor.inference.evaluate import checkpoint_sources, default_out_dir, evaluate

    out = out or default_out_dir(checkpoint)
    each = [r["name"] for r in checkpoint_sources(checkpoint)] if data is None and source is None and labels is None \
        else []
    for name in each if len(each) > 1 else [source]:
        where = out / name if len(each) > 1 else out
        ev = evaluate(checkpoint, data, fold=fold, labels=labels, out=where, tta=tta, batch_size=batch_size,
                      prior_correction=prior_correction, device=device, route=route, route_threshold=route_threshold,
                      source=name)
        _print(ev, where)


def _print(ev, out: Path) -> None:
    from okkhor.inference.scoring import format_summary

    m = ev.metrics
    lines = format_summary(m)
    typer.echo(f"{lines[0]} ({ev.source})")
    for line in lines[1:]:
        typer.echo(line)
    head = m.get("grapheme_head")
    if head:
        auroc = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        typer.echo(f"  grapheme head ({head['classes']} graphemes): seen AUROC {auroc(head['seen_auroc'])}, "
                   f"known AUROC {auroc(head['known_auroc'])}"
                   + ("" if m["routed"] is None else f"; {m['routed']} images routed to it"))
    typer.echo(f"wrote {out}/metrics.json and plots")
