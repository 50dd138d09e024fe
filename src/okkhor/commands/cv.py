"""`okkhor cv`: train every fold into RUNS/fold<k>/, then write out-of-fold probabilities and scores."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from okkhor.commands.flags import option, resolve_config


def command(
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Data dir, as for `okkhor train` (folds.csv is "
                                                                  "made when missing, with data.folds folds); repeat "
                                                                  "it for several sources (or set data.sources)."),
    out: Path = typer.Option(..., "--out", help="Folder of the fold runs (RUNS/fold<k>/), oof.npz and cv.csv."),
    config: Optional[str] = typer.Option(None, "--config", help="A preset's name (okkhor configs lists them) or a "
                                                                "YAML file."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds to train, e.g. 0,1,2 (default: every fold "
                                                              "of data.folds)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one config key: key=value "
                                                                 "(repeatable)."),
    model: Optional[str] = option("model"),
    epochs: Optional[str] = option("epochs"),
    lr: Optional[str] = option("lr"),
    batch_size: Optional[str] = option("batch_size"),
    image_size: Optional[str] = option("image_size"),
    amp: Optional[str] = option("amp"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per epoch."),
) -> None:
    """Cross-validate: train one run per fold (each validated on its fold), then predict every training image
    with the fold that held it out (RUNS/oof.npz) and score them (RUNS/cv.csv, one row per fold and the OOF row).

    A finished fold is skipped and an unfinished one resumed, so rerunning the same command continues it.
    `okkhor predict RUNS` ensembles every fold's best.pt; `okkhor report RUNS` shows the fold table.

    Several sources: each fold run reads them all and holds out fold k of each; cv.csv has a row per source and
    fold, and an OOF row per source.

    Examples:
      okkhor cv --data data --out runs/cv --config effnet-b0-128
      okkhor cv --data real --data synth --out runs/cv-both --config generalize-cpu
      okkhor cv --data data --out runs/cv --folds 0,1 --epochs 3
    """
    from okkhor.training.cv import parse_folds, run_cv

    cfg = resolve_config(config, set_, model=model, epochs=epochs, lr=lr, batch_size=batch_size,
                         image_size=image_size, amp=amp)
    if not data and not cfg.data.sources:
        raise typer.BadParameter("required (or set data.sources)", param_hint="'--data'")
    run_cv(data or None, out, cfg, parse_folds(folds, cfg.data.folds), show_progress=progress, log=typer.echo)
