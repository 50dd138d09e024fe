"""`okkhor import`: a folder of labelled images (ImageFolder layout) -> the competition's format."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def command(
    image_dir: Path = typer.Argument(..., help="Folder with one subfolder of images per class."),
    out_dir: Path = typer.Argument(..., help="Data dir to write (created if missing); the other split's files "
                                             "in it are kept."),
    labels: Path = typer.Option(..., "--labels", help="MAP.csv: folder,<target>,... (e.g. folder,grapheme_root,"
                                                      "vowel_diacritic,consonant_diacritic; an optional grapheme "
                                                      "column is kept)."),
    split: str = typer.Option("train", "--split", help="train or test."),
    class_map: Optional[Path] = typer.Option(None, "--class-map", help="class_map.csv whose targets MAP.csv uses "
                                                                       "(default: the built-in Bengali map)."),
    rows_per_file: Optional[int] = typer.Option(None, "--rows-per-file",
                                                help="Images per parquet file (default as okkhor synth)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace this split's files in OUT_DIR."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Import other labelled handwriting (e.g. BanglaLekha-Isolated, CMATERdb) so that okkhor trains on it.

    IMAGE_DIR/<folder>/<image> (torchvision's ImageFolder layout; any image OpenCV reads). Each folder's labels
    come from MAP.csv. Light-on-dark images are detected per image (by the median of their border) and
    inverted; every image is scaled onto the 137x236 page, keeping its aspect. An unreadable image or a folder
    that MAP.csv does not name costs one line each on stderr; the rest is imported.

    Writes <split>_image_data_<i>.parquet, train.csv (or test.csv, sample_submission.csv, test_labels.csv) and
    class_map.csv, ready for okkhor prepare / train (or predict / score).

    Examples:
      okkhor import banglalekha/train data/bl --labels bl-map.csv
      okkhor import banglalekha/test data/bl --labels bl-map.csv --split test
      okkhor import digits/ data/digits --labels digits-map.csv --class-map digits-classes.csv
    """
    from okkhor.sources.imagefolder import import_image_folder

    s = import_image_folder(image_dir, out_dir, labels, split=split, class_map=class_map,
                            rows_per_file=rows_per_file, overwrite=overwrite,
                            warn=lambda line: typer.echo(f"skipped: {line}", err=True), show_progress=progress)
    typer.echo(f"import: {s['images']} {split} images from {s['folders']} folders (inverted {s['inverted']}, "
               f"unreadable {s['unreadable']}, folders not in the map {s['unmapped_folders']}), targets "
               f"{', '.join(s['targets'])}, {len(s['files'])} parquet file(s): {s['seconds']:.1f}s -> {s['out_dir']}")
