"""`okkhor train`: train a recogniser on a data dir and write a run dir."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def command(
    data: Path = typer.Option(..., "--data", help="Data dir: train.csv, train_image_data_*.parquet (or a prepared "
                                                  "cache), class_map.csv; folds.csv is made when missing."),
    out: Path = typer.Option(..., "--out", help="Run dir: config.yaml, metrics.csv, checkpoints/, tb/."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (e.g. configs/demo-cpu.yaml); with "
                                                                 "--resume the default is RUN_DIR/config.yaml."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override one config key: key=value "
                                                                 "(repeatable), e.g. --set train.lr=3e-4."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from RUN_DIR/checkpoints/last.pt."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per epoch."),
) -> None:
    """Train a timm backbone with one head per target; every epoch evaluate on the validation fold and on a
    fixed clean subset of the training set, and checkpoint (last.pt, and best.pt by the valid score).

    A missing prepare cache (data.image_size, data.crop) or folds.csv (data.folds) is made first.
    Several processes: torchrun --nproc_per_node=2 -m okkhor train ... (gloo on CPU, nccl on GPUs).

    Examples:
      okkhor train --data demo/data --out runs/demo --config configs/demo-cpu.yaml
      okkhor train --data data --out runs/b0 --config configs/effnet-b0-128.yaml --set data.fold=1
      okkhor train --data data --out runs/b0 --resume
      okkhor train --data data --out runs/quick --set model.name=resnet18 --set train.epochs=2 --set data.limit=2000
    """
    from okkhor.config import load_config
    from okkhor.train import train

    if config is None and resume and (out / "config.yaml").is_file():
        config = out / "config.yaml"
    cfg = load_config(config, set_ or [])
    train(data, out, cfg, resume=resume, show_progress=progress, log=typer.echo)
