"""Synthetic images made in this process: the labelled preview grid, and (labels, image) pairs for notebooks."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from okkhor.sources.synth.checks import check_preview
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.fonts import select_fonts
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.imager import Imager, Variation
from okkhor.sources.synth.keys import image_rng
from okkhor.sources.synth.labels import Sample, sample_labels
from okkhor.sources.synth.plan import Draw, check_style, plan_draws
from okkhor.sources.synth.shape_style import ShapeStyle
from okkhor.utils.files import atomic_path


def _picks(samples: dict[str, Sequence[Sample]], cells: int) -> list[tuple[str, int]]:
    """(split, index) of the images shown: an even share of the grid per split, spread over its images."""
    picks: list[tuple[str, int]] = []
    splits = [(split, len(items)) for split, items in samples.items() if len(items)]
    for k, (split, n) in enumerate(splits):
        share = cells // len(splits) + (1 if k < cells % len(splits) else 0)
        picks += [(split, int(i)) for i in np.unique(np.linspace(0, n - 1, min(share, n)).astype(int))]
    return picks


def write_preview(path: str | Path, samples: dict[str, Sequence[Sample]], seed: int,
                  fonts: Sequence[str | FontSpec] | None = None, variation: Variation | None = None, rows: int = 5,
                  cols: int = 6, draws: dict[str, Sequence[Draw]] | None = None,
                  hand: HandStyle | None = None, shape: ShapeStyle | None = None) -> Path:
    """A PNG grid of dataset images (re-rendered from their seeds, so identical to the files), titled with labels.

    Titles give root/vowel/consonant as integers (matplotlib cannot shape Bengali), the image id, 'U' for an
    unseen triple, then the font family ('new' when held out of train) and 'hand' for the hand style.
    Without `draws`, every image is drawn in style mix from all the fonts.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    path = check_preview(path)
    picks = _picks(samples, rows * cols)
    specs = [f if isinstance(f, FontSpec) else select_fonts([f])[0] for f in fonts] if fonts else select_fonts()
    imager = Imager(specs, variation, hand=hand, shape=shape)
    if draws is None:
        draws = {split: plan_draws(split, items, seed, imager.renderers) for split, items in samples.items()}
    fig = Figure(figsize=(cols * 2.2, rows * 1.75))
    axes = fig.subplots(rows, cols)
    for k, ax in enumerate(np.asarray(axes).ravel()):
        ax.axis("off")
        if k < len(picks):
            split, i = picks[k]
            s, d = samples[split][i], draws[split][i]
            ax.imshow(imager(s.grapheme, image_rng(seed, split, i), d.face, d.hand), cmap="gray", vmin=0, vmax=255)
            font = specs[d.face].family + ("" if d.font_seen else " (new)") + (" hand" if d.hand else "")
            ax.set_title(f"{split.capitalize()}_{i}: {s.root}/{s.vowel}/{s.consonant}" + ("" if s.seen else " U")
                         + f"\n{font}", fontsize=7, color="black" if s.seen else "firebrick")
    fig.suptitle("okkhor synth - labels root/vowel/consonant, U = unseen label triple; font family, hand style",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    return path


def iter_samples(split: str, n: int, seed: int = 0, unseen_fraction: float = 0.0,
                 fonts: Sequence[str] | None = None, style: str = "mix") -> Iterator[tuple[Sample, np.ndarray]]:
    """(labels, image) pairs made in this process, for notebooks and tests; same images as `synthesize`."""
    imager = Imager(select_fonts(fonts))
    samples = sample_labels(split, n, unseen_fraction, seed)
    for i, (sample, d) in enumerate(zip(samples, plan_draws(split, samples, seed, imager.renderers,
                                                            style=check_style(style)), strict=False)):
        yield sample, imager(sample.grapheme, image_rng(seed, split, i), d.face, d.hand)
