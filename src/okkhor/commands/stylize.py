"""`okkhor stylize`: learn a synthetic -> real hand translator (CycleGAN), or write a stylised copy of a data dir."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

FIT_BATCH, APPLY_BATCH = 16, 64


class Action(str, Enum):
    fit = "fit"
    apply = "apply"


def _fit(stylizer: Optional[Path], real: Optional[Path], synth: Path, out: Path, batch: Optional[int],
         threads: int, progress: bool, **options) -> None:
    from okkhor.errors import OkkhorError
    from okkhor.sources.stylize.fit import fit_stylizer
    from okkhor.sources.stylize.stylizer import StylizeOptions

    if stylizer is not None:
        raise OkkhorError(f"{stylizer}: fit takes no STYLIZER argument; the stylizer it learns is written to --out")
    if real is None:
        raise OkkhorError("fit needs --real REAL_DIR (a data dir of real handwriting, e.g. from okkhor import)")
    opts = StylizeOptions(batch=FIT_BATCH if batch is None else batch, **options)
    s = fit_stylizer(real, synth, out, opts, show_progress=progress, threads=threads)
    first, last = s["first"], s["last"]
    typer.echo(f"stylize fit: {s['steps']} steps of {opts.batch} on {s['synth_images']} synthetic and "
               f"{s['real_images']} real images at {opts.size} px, {s['seconds']:.1f}s ({s['steps_per_s']} steps/s); "
               f"cycle loss {first['cycle']:.3f} -> {last['cycle']:.3f}, GAN loss {first['gan']:.3f} -> "
               f"{last['gan']:.3f} -> {s['out']}")


def _apply(stylizer: Optional[Path], real: Optional[Path], synth: Path, out: Path, batch: Optional[int],
           reach: int, keep_stray: bool, threads: int, overwrite: bool, progress: bool) -> None:
    from okkhor.errors import OkkhorError
    from okkhor.sources.stylize.apply import stylize_dir

    if stylizer is None:
        raise OkkhorError("apply needs the STYLIZER.pt argument (made by `okkhor stylize fit`)")
    if real is not None:
        raise OkkhorError(f"--real {real}: only fit reads real images; apply reads the stylizer and --synth")
    s = stylize_dir(stylizer, synth, out, batch=APPLY_BATCH if batch is None else batch,
                    reach=None if keep_stray else reach, overwrite=overwrite,
                    show_progress=progress, threads=threads)
    counts = ", ".join(f"{n} {split}" for split, n in s["images"].items())
    kept = "every mark kept" if s["reach"] is None else f"ink kept within {s['reach']} px of the synthetic ink"
    typer.echo(f"stylize apply: {counts} images at {s['size']} px ({kept}), {len(s['copied'])} CSV files copied, "
               f"{s['seconds']:.1f}s -> {s['out_dir']}")


def command(
    action: Action = typer.Argument(..., help="fit: learn a stylizer from --real and --synth; apply: write a "
                                              "stylised copy of --synth."),
    stylizer: Optional[Path] = typer.Argument(None, help="apply: the stylizer file that fit wrote."),
    real: Optional[Path] = typer.Option(None, "--real", help="fit: data dir of real handwriting (its train split)."),
    synth: Path = typer.Option(..., "--synth", help="Data dir of synthetic images (fit: its train split; apply: "
                                                    "both splits)."),
    out: Path = typer.Option(..., "--out", help="fit: the stylizer file to write (.pt); apply: the data dir to "
                                                "write."),
    size: int = typer.Option(64, "--size", help="fit: side of the square ink crops it learns on (a multiple of 8); "
                                                "apply reads it from the stylizer."),
    steps: int = typer.Option(2000, "--steps", help="fit: training steps."),
    batch: Optional[int] = typer.Option(None, "--batch", help=f"Images per batch (default: fit {FIT_BATCH}, apply "
                                                              f"{APPLY_BATCH})."),
    seed: int = typer.Option(0, "--seed", help="fit: random seed; the same seed gives the same stylizer."),
    channels: int = typer.Option(16, "--channels", help="fit: generator width (the residual blocks have twice it)."),
    blocks: int = typer.Option(3, "--blocks", help="fit: residual blocks in each generator."),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="fit: bfloat16 autocast (faster on CPUs with bf16 units, "
                                                           "e.g. AMD Zen 4, Intel Sapphire Rapids)."),
    reach: int = typer.Option(-1, "--reach", help="apply: pixels (at the stylizer's size) the stylised ink may lie "
                                                   "from the synthetic ink; marks beyond are removed (-1: size / 16)."),
    keep_stray: bool = typer.Option(False, "--keep-stray", help="apply: keep every mark the generator draws."),
    threads: int = typer.Option(1, "--threads", help="torch's CPU threads; the networks are small, and on a busy "
                                                     "machine more threads can be many times slower."),
    overwrite: bool = typer.Option(False, "--overwrite", help="apply: replace a data dir already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Carry the hand of real images onto synthetic ones: an unpaired image-to-image translator (CycleGAN).

    fit learns two small generators (synthetic -> real and back) and two PatchGAN discriminators on the ink crops
    okkhor prepare makes of the two data dirs' training images (LSGAN + cycle + identity losses, Adam), and writes
    one .pt file of tensors and plain values (read back with torch.load(weights_only=True)). apply writes a copy of
    a synthetic data dir in the competition's format with each image replaced by the synthetic -> real
    generator's output, brought back onto the 137x236 page (dark ink on a light page, placed as okkhor import
    places an image); its CSV files are copied. CycleGAN's generators hide what the cycle needs in stray marks
    (here often in a corner), so apply keeps the stylised ink within --reach pixels of the synthetic ink. The
    prepare cache of each input is made (or reused) in DATA_DIR/cache/<size>.

    Examples:
      okkhor import handwriting/images data/real --labels handwriting/labels.csv
      okkhor synth data/synth --train 20000 --test 2000
      okkhor stylize fit --real data/real --synth data/synth --out stylizer.pt --steps 2000
      okkhor stylize apply stylizer.pt --synth data/synth --out data/synth-stylized
      okkhor prepare data/synth-stylized --size 64
    """
    if action is Action.fit:
        _fit(stylizer, real, synth, out, batch, threads, progress, size=size, steps=steps, seed=seed, channels=channels,
             blocks=blocks, bf16=bf16)
    else:
        _apply(stylizer, real, synth, out, batch, reach, keep_stray, threads, overwrite, progress)
