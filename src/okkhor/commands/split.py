"""`okkhor split`: multilabel stratified folds."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    data_dir: Path = typer.Argument(..., help="Folder with train.csv (and class_map.csv)."),
    folds: int = typer.Option(5, "--folds", help="Number of folds."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output CSV (default DATA_DIR/folds.csv)."),
    group: str = typer.Option("none", "--group", help="none: stratify images over all targets; grapheme: hold out "
                                                      "whole label triples (no triple in two folds), stratified "
                                                      "by root, so validation measures unseen graphemes."),
) -> None:
    """Assign every training image to a fold, stratified over all targets at once; writes image_id,fold.

    With `--group grapheme` every label triple lies in exactly one fold: validating on a fold then measures
    graphemes the model never trained on, as the competition's private test did.

    Examples:
      okkhor split data/
      okkhor split data/ --folds 4 --seed 7 --out data/folds4.csv
      okkhor split data/ --group grapheme
    """
    import numpy as np
    import pandas as pd

    from okkhor.data.folds import split
    from okkhor.io.labels import load_targets
    from okkhor.utils.files import check_writable

    if out is not None:
        check_writable(out, "--out")
    elif data_dir.is_dir():
        check_writable(data_dir / "folds.csv", "folds file", hint="pass --out FILE")
    targets = load_targets(data_dir)
    path = split(data_dir, targets, folds=folds, seed=seed, out=out, group=group,
                 note=lambda line: typer.echo(line, err=True))
    counts = np.bincount(pd.read_csv(path)["fold"].to_numpy(), minlength=folds)
    typer.echo(f"wrote {path}: {counts.sum()} images in {folds} folds ({', '.join(map(str, counts))})")
