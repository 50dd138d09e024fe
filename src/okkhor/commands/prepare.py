"""`okkhor prepare`: raw parquet files -> cropped, resized uint8 cache."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    data_dir: Path = typer.Argument(..., help="Folder with train.csv and *_image_data_*.parquet files."),
    size: str = typer.Option("128", "--size", metavar="S|HxW",
                             help="Side of the square output images, or HEIGHTxWIDTH (128x224)."),
    crop: bool = typer.Option(True, "--crop/--no-crop", help="Crop to the ink's bounding box before resizing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache dir (default DATA_DIR/cache/<size>[-nocrop]/)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads that read and preprocess (default: CPU "
                                                                  "count); the cache is the same whatever it is."),
) -> None:
    """Build the training cache: invert, crop to the ink, pad to the output's shape, resize (area).

    Writes train.npy / test.npy (uint8 N x H x W, memory-mappable) and the image_id order. A second call with
    the same inputs and options reuses the cache.

    Examples:
      okkhor prepare data/
      okkhor prepare data/ --size 64 --out /tmp/cache64
      okkhor prepare data/ --size 128x224 --no-crop
      okkhor prepare data/ --no-crop
      okkhor prepare data/ --workers 4
    """
    from okkhor.data.prepare import PrepareOptions, default_cache_dir, prepare
    from okkhor.utils.files import check_writable
    from okkhor.utils.sizes import size_option

    size = size_option(size)
    if out is not None:
        check_writable(out, "--out", folder=True)
    elif data_dir.is_dir():
        check_writable(default_cache_dir(data_dir, PrepareOptions(size=size, crop=crop)), "cache folder",
                       folder=True, hint="pass --out DIR")
    result = prepare(data_dir, size=size, crop=crop, out=out, workers=workers)
    for split, info in result.items():
        state = "reused" if info["reused"] else "written"
        typer.echo(f"{split}: {info['count']} images, {state}: {info['path']}")
