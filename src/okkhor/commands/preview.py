"""`okkhor preview`: a PNG grid of augmented, mixed training samples with their mixed labels."""
from __future__ import annotations

from pathlib import Path

import typer

from okkhor.options import AUG_PRESETS, MIX_KINDS, choices


def command(
    data_dir: Path = typer.Argument(..., help="Folder with train.csv and train_image_data_*.parquet files."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    aug: str = typer.Option("medium", "--aug", help=f"Augmentation preset: {choices(AUG_PRESETS)}."),
    aug_file: str = typer.Option("", "--aug-file", help="An albumentations pipeline saved with A.save "
                                                        "(overrides --aug)."),
    mix: str = typer.Option("mixup", "--mix", help=f"Mixing: {choices(MIX_KINDS)}."),
    alpha: float = typer.Option(1.0, "--alpha", help="Beta/Dirichlet concentration of the mixing weights."),
    k: int = typer.Option(3, "--k", help="Images mixed per sample with --mix dirichlet."),
    n: int = typer.Option(32, "--n", help="Number of samples shown."),
    size: str = typer.Option("64", "--size", metavar="S|HxW", help="Image side or HEIGHTxWIDTH (the prepare cache "
                                                                   "of this size is reused or built)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the sample choice, augmentation and mixing."),
) -> None:
    """Show what a recipe feeds the model: augmented, mixed samples with their mixed labels under each.

    Labels read r<grapheme_root> v<vowel_diacritic> c<consonant_diacritic> ×<weight>, one line per mixed image.

    Examples:
      okkhor preview data/ --out preview.png
      okkhor preview data/ --aug heavy --mix cutmix --n 16 --out cutmix.png
      okkhor preview data/ --aug none --mix dirichlet --k 3 --alpha 0.5 --out dirichlet.png
      okkhor preview data/ --aug-file my_aug.yaml --mix none --size 128 --seed 3 --out mine.png
    """
    from okkhor.reporting.preview import preview
    from okkhor.utils.files import check_writable
    from okkhor.utils.sizes import size_option

    check_writable(out, "--out")
    result = preview(data_dir, out, aug=aug, mix=mix, n=n, size=size_option(size), seed=seed, aug_file=aug_file,
                     alpha=alpha, k=k)
    typer.echo(f"wrote {result['path']} ({result['count']} samples, mix {result['mix']})")
