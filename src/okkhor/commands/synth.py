"""`okkhor synth`: render a synthetic dataset in the Bengali.AI competition's format."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from okkhor.sources.synth.shape_style import parse_shape, shape_help

ROWS_PER_FILE_HELP = ("Images per parquet file, at most 50,210 (default: up to 10,042, and a split of 4,000 or more "
                      "in at least two files); files are made in parallel.")
HOLDOUT_FONTS_HELP = ("Comma-separated font families train never uses; test images are drawn in them (the "
                      "`font_seen` column is False for those).")
STYLE_HELP = ("font: font outlines, distorted; hand: per-glyph jitter, re-inked strokes with a varying pen, tremor, "
              "paper and scan marks; mix: each image one or the other (half each).")
GRAPHEMES_HELP = ("Render only the label triples this CSV lists: columns grapheme_root, vowel_diacritic, "
                  "consonant_diacritic (and optionally grapheme, the string to draw), or a grapheme column alone.")
MISSING_FROM_HELP = ("Render what the data dir DATA lacks: every triple of the class map's grapheme list (the 1,295 "
                     "train graphemes' triples and okkhor's unseen triples) absent from DATA/train.csv.")
MISSING_HELP = ("With --missing-from: triples (default; the triples DATA lacks) or roots (every triple of the "
                "grapheme list whose grapheme_root never occurs in DATA/train.csv, whatever its diacritics).")


def command(
    out_dir: Path = typer.Argument(..., help="Folder to write the dataset into (created if missing)."),
    train: int = typer.Option(..., "--train", help="Number of train images."),
    test: int = typer.Option(..., "--test", help="Number of test images."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    unseen_test_fraction: float = typer.Option(
        0.0, "--unseen-test-fraction", help="Fraction of test images whose label triple is not a train grapheme."),
    train_unseen_fraction: float = typer.Option(
        0.0, "--train-unseen-fraction",
        help="Fraction of train images with such unseen triples (never the ones test uses)."),
    fonts: Optional[str] = typer.Option(
        None, "--fonts", help="Comma-separated font or family names (default: every usable font)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: CPU count)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also save a labelled grid of samples (.png)."),
    rows_per_file: Optional[int] = typer.Option(None, "--rows-per-file", help=ROWS_PER_FILE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in OUT_DIR."),
    holdout_fonts: Optional[str] = typer.Option(None, "--holdout-fonts", help=HOLDOUT_FONTS_HELP),
    holdout_share: Optional[float] = typer.Option(
        None, "--holdout-share",
        help="Share of test images drawn in the --holdout-fonts families (default 1); the rest use train fonts."),
    fonts_dir: Optional[Path] = typer.Option(
        None, "--fonts-dir", help="Folder of your own .ttf/.otf Bengali fonts to add to the shipped ones."),
    style: str = typer.Option(
        "mix", "--style",
        help=STYLE_HELP),
    shape: str = typer.Option("none", "--shape", help=shape_help()),
    graphemes: Optional[Path] = typer.Option(None, "--graphemes", help=GRAPHEMES_HELP),
    missing_from: Optional[Path] = typer.Option(None, "--missing-from", help=MISSING_FROM_HELP),
    missing: Optional[str] = typer.Option(None, "--missing", help=MISSING_HELP),
) -> None:
    """Render handwritten-looking Bengali graphemes into train/test files shaped like the competition's.

    Writes train.csv, train_image_data_<i>.parquet, test.csv, test_image_data_<i>.parquet, class_map.csv,
    sample_submission.csv and test_labels.csv (the answers, with `seen`, for `okkhor score`). train.csv and
    test_labels.csv also carry `font` (the family each image is drawn in) and `font_seen`.
    Text is shaped with HarfBuzz and rasterised with FreeType from fonts installed with Python packages
    (the `synth` extra: pip install okkhor[synth]).

    Examples:
      okkhor synth data/synth --train 20000 --test 2000 --seed 0
      okkhor synth data/synth --train 50000 --test 5000 --unseen-test-fraction 0.3 --train-unseen-fraction 0.3
      okkhor synth /tmp/tiny --train 200 --test 50 --fonts hind-siliguri,bangla-medium --preview tiny.png
      okkhor synth data/heldout --train 20000 --test 2000 --holdout-fonts bensen --holdout-share 0.5
      okkhor synth data/mine --train 2000 --test 200 --fonts-dir ~/fonts --style hand --preview hand.png
      okkhor synth data/shapes --train 20000 --test 2000 --shape mild
      okkhor synth data/trim --train 20000 --test 2000 --shape trim=0.5

    An unknown --fonts name or --holdout-fonts family fails with the list of available ones. A --fonts-dir file
    that cannot be used is left out with a warning naming it.

    With --graphemes or --missing-from, both splits draw their images over that list of triples instead, evenly
    (each triple once before any twice: --train at least the number of triples covers them all); the unseen
    fractions do not apply. For example, what a real set lacks:
      okkhor synth data/fill --train 5000 --test 0 --missing-from data/real
      okkhor synth data/roots --train 2000 --test 0 --missing-from data/real --missing roots
      okkhor synth data/mine --train 600 --test 0 --graphemes wanted.csv
    """
    from okkhor.utils.extras import require

    require("synth", "okkhor synth")
    from okkhor.sources.synth.writer import synthesize
    from okkhor.utils.files import check_writable

    shape_style = parse_shape(shape)
    check_writable(out_dir, "OUT_DIR", folder=True)
    if preview is not None:
        check_writable(preview, "--preview")
    s = synthesize(out_dir, n_train=train, n_test=test, seed=seed, unseen_test_fraction=unseen_test_fraction,
                   train_unseen_fraction=train_unseen_fraction, fonts=fonts, workers=workers, preview=preview,
                   rows_per_file=rows_per_file, overwrite=overwrite, holdout_fonts=holdout_fonts,
                   holdout_share=holdout_share, fonts_dir=fonts_dir, style=style, graphemes=graphemes,
                   missing_from=missing_from, missing=missing, shape=shape_style)
    _say(s)


def _say(s: dict) -> None:
    """The notes, warnings and summary line of a synthesis."""
    for note in s["font_notes"]:
        typer.echo(f"note: {note}", err=True)
    for warning in s["font_warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    listed = s["listed_triples"]
    if listed is not None and s["train"] < listed:
        typer.echo(f"note: {s['train']} train images cover {s['train']} of the {listed} listed triples; "
                   f"--train {listed} or more covers them all", err=True)
    held = f", {s['test_font_unseen']} in {','.join(s['holdout_fonts'])}" if s["holdout_fonts"] else ""
    held += f", over {listed} listed triples" if listed is not None else ""
    typer.echo(f"synth: {s['train']} train ({s['train_unseen']} unseen) + {s['test']} test ({s['test_unseen']} "
               f"unseen{held}) images in {len(s['files'])} parquet files, {len(s['fonts'])} fonts, {s['workers']} "
               f"workers: {s['seconds']:.1f}s, {s['images_per_s']:.0f} images/s -> {s['out_dir']}")
