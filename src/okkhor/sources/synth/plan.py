"""The drawing plan of a split: each image's face and style, with font families held out of train."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from okkhor.errors import OkkhorError
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.keys import DRAWS_STREAM, split_rng
from okkhor.sources.synth.labels import Sample

STYLES = ("font", "hand", "mix")
MIX_HAND_SHARE = 0.5  # share of hand-style images under style mix


@dataclass(frozen=True)
class Draw:
    """How one image is drawn: its face (an index into the job's fonts), and whether in the hand style."""

    face: int
    hand: bool
    font_seen: bool = True  # False when the face's family is held out of train


def check_style(style: str) -> str:
    if style not in STYLES:
        raise OkkhorError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def _families(specs: Sequence[FontSpec], faces: Sequence[int]) -> list[list[int]]:
    """The faces grouped by family, families in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in faces:
        groups.setdefault(specs[i].family, []).append(i)
    return list(groups.values())


def pick_face(renderers: Sequence, families: Sequence[Sequence[int]], text: str, u_family: float,
              u_face: float) -> int:
    """A family by u_family, a face of it by u_face; the next family instead while the face cannot form the
    text's conjuncts (it would show a hasanta)."""
    first = int(u_family * len(families))
    for step in range(len(families)):
        family = families[(first + step) % len(families)]
        face = family[int(u_face * len(family))]
        if not renderers[face].shows_hasanta(text):
            return face
    family = families[first]
    return family[int(u_face * len(family))]


def holdout_faces(specs: Sequence[FontSpec], families: Sequence[str] | str | None) -> list[int]:
    """Indices of the faces whose family is held out; OkkhorError naming the families when one is unknown."""
    if families is None:
        return []
    if isinstance(families, str):
        families = [f for f in (p.strip() for p in families.split(",")) if f]
    wanted = [f.strip().lower() for f in families]
    known = list(dict.fromkeys(s.family for s in specs))
    unknown = [f for f in wanted if f not in known]
    if unknown or not wanted:
        raise OkkhorError(f"holdout-fonts: unknown font family {', '.join(unknown) or '(none given)'}; families: "
                          f"{', '.join(known)}")
    return [i for i, s in enumerate(specs) if s.family in wanted]


def plan_draws(split: str, samples: Sequence[Sample], seed: int, renderers: Sequence, held: Sequence[int] = (),
               holdout_share: float = 1.0, style: str = "mix") -> list[Draw]:
    """Face and style of each of a split's images, a function of (seed, split, texts, fonts, options) only.

    Train images never use a held-out face; test images do for a share `holdout_share` of them (exactly
    round(share * n), spread by the seed), and use the other faces otherwise.
    """
    n = len(samples)
    rng = split_rng(seed, split, DRAWS_STREAM)
    u = rng.random((n, 3))
    in_held = np.zeros(n, bool)
    if split == "test" and len(held):
        in_held[rng.permutation(n)[:int(round(n * holdout_share))]] = True
    specs = [r.spec for r in renderers]
    held_set = set(held)
    pools = {True: _families(specs, held),
             False: _families(specs, [i for i in range(len(specs)) if i not in held_set])}
    if not pools[False] and not in_held.all():
        raise OkkhorError(f"holdout-fonts: every font family is held out, none is left for {split} images")
    hand = u[:, 2] < MIX_HAND_SHARE if style == "mix" else np.full(n, style == "hand")
    return [Draw(pick_face(renderers, pools[bool(h)], s.grapheme, a, b), bool(k), not h)
            for s, (a, b, _), h, k in zip(samples, u, in_held, hand, strict=False)]
