"""`okkhor train`: train a recogniser on a data dir and write a run dir."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from okkhor.commands.flags import option, resolve_config


def command(
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Data dir: train.csv, train_image_data_*.parquet "
                                                                  "(or a prepared cache), class_map.csv; folds.csv is "
                                                                  "made when missing. Repeat it to train on several "
                                                                  "sources (data.sources gives them shares)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run dir: config.yaml, metrics.csv, checkpoints/, tb/."),
    config: Optional[str] = typer.Option(None, "--config", help="A preset's name (okkhor configs lists them) or a "
                                                                "YAML file; with --resume the default is "
                                                                "RUN_DIR/config.yaml."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one config key: key=value "
                                                                 "(repeatable), e.g. --set train.lr=3e-4."),
    model: Optional[str] = option("model"),
    epochs: Optional[str] = option("epochs"),
    lr: Optional[str] = option("lr"),
    batch_size: Optional[str] = option("batch_size"),
    image_size: Optional[str] = option("image_size"),
    fold: Optional[str] = option("fold"),
    amp: Optional[str] = option("amp"),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (YAML) and exit."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from RUN_DIR/checkpoints/last.pt."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint's weights (same "
                                                             "model.name; any image size) with a new optimizer "
                                                             "and schedule; heads of other targets start afresh."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per epoch."),
) -> None:
    """Train a timm backbone with one head per target; every epoch evaluate on the validation fold and on a
    fixed clean subset of the training set, and checkpoint (last.pt, and best.pt by the valid score).

    A missing prepare cache (data.image_size, data.crop) or folds.csv (data.folds) is made first.
    Several processes: torchrun --nproc_per_node=2 -m okkhor train ... (gloo on CPU, nccl on GPUs).

    Several sources (--data A --data B, or data.sources): each keeps its own cache and folds; every epoch draws
    each one's share (default: by size) and validates on each one's fold (a valid row per source in metrics.csv);
    best.pt follows train.select_on's (default: the first's).

    Examples:
      okkhor train --data demo/data --out runs/demo --config demo-cpu
      okkhor train --data real --data synth --out runs/both --config generalize-cpu
      okkhor train --data data --out runs/b0 --config effnet-b0-128 --fold 1
      okkhor train --data data --out runs/b0 --resume
      okkhor train --data data --out runs/b0-160 --init runs/b0/checkpoints/best.pt --image-size 160 --lr 3e-4
      okkhor train --data data --out runs/quick --model resnet18 --epochs 2 --set data.limit=2000
      okkhor train --data data --out runs/wide --image-size 128x224 --set data.crop=false
      okkhor train --config demo-cpu --epochs 3 --print-config
    """
    if config is None and resume and out is not None and (out / "config.yaml").is_file():
        config = str(out / "config.yaml")
    cfg = resolve_config(config, set_, model=model, epochs=epochs, lr=lr, batch_size=batch_size,
                         image_size=image_size, fold=fold, amp=amp)
    if print_config:
        typer.echo(cfg.to_yaml(), nl=False)
        return
    for name, value in (("--data", data or cfg.data.sources or None), ("--out", out)):
        if value is None:
            raise typer.BadParameter("required (only --print-config runs without it; data.sources stands for --data)",
                                     param_hint=f"'{name}'")
    from okkhor.training.train import train

    train(data or None, out, cfg, resume=resume, show_progress=progress, log=typer.echo, init=init)
