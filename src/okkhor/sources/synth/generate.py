"""Synthetic Bengali.AI data: rendered graphemes with handwriting-like variation, written as the competition's files."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from okkhor.bengali import (
    NUM_CLASSES,
    TARGETS,
    all_triples,
    grapheme_string,
    known_graphemes,
    seen_triples,
    starts_with_consonant,
)
from okkhor.errors import OkkhorError
from okkhor.sources.synth.fonts import FontSpec, discover_fonts, load_font_dir, select_fonts
from okkhor.sources.synth.hand import HandStyle

MAX_ROWS_PER_FILE = 50_210  # rows of one competition parquet file
DEFAULT_ROWS_PER_FILE = 10_042  # a fifth of that: files are the unit of parallel work
SPLIT_IN_TWO_ROWS = 4_000  # by default a split this big is at least two files, so two cores share it
ROW_GROUP_ROWS = 10_042  # parquet pays a fixed cost per row group and 32,332 columns: keep groups big
SPLIT_CODES = {"train": 0, "test": 1}
UNSEEN_TEST_SHARE = 0.5  # share of the unseen label triples kept for test; train may use only the rest
GRAIN_SEED = 2020
STYLES = ("font", "hand", "mix")
MIX_HAND_SHARE = 0.5  # share of hand-style images under style mix
OUTPUT_NAMES = ("train.csv", "test.csv", "test_labels.csv", "class_map.csv", "sample_submission.csv")


# ----------------------------------------------------------------------------------------------- variation

@dataclass(frozen=True)
class Variation:
    """Ranges of the per-image variation; every image draws its own values from these."""

    fill: tuple[float, float] = (0.55, 1.0)  # ink box size, as a fraction of the largest that fits the frame
    margin_px: float = 8.0  # kept free at the frame's edges (prepare ignores ink within 5 px of them)
    rotate_deg: float = 7.0  # +- rotation
    shear: float = 0.22  # +- horizontal shear
    aspect: float = 0.18  # +- log of the x/y stretch
    distort_px: float = 3.0  # largest displacement of the smooth grid distortion, in output pixels
    stroke_px: tuple[int, int] = (-1, 2)  # erosion (negative) .. dilation (positive), in pixels
    blur_sigma: tuple[float, float] = (0.0, 0.8)
    ink: tuple[float, float] = (0.0, 90.0)  # grey level of the ink (0 black)
    pressure: float = 0.2  # ink fades by up to this fraction along smooth patches (pen pressure)
    background: tuple[float, float] = (236.0, 254.0)
    background_slope: float = 6.0  # +- grey levels of a gradient across the page
    noise_sigma: tuple[float, float] = (0.0, 5.0)

    def __post_init__(self) -> None:
        pairs = {"fill": (self.fill, 0.05, 1.0), "blur_sigma": (self.blur_sigma, 0.0, 5.0),
                 "ink": (self.ink, 0.0, 200.0), "background": (self.background, 150.0, 255.0),
                 "noise_sigma": (self.noise_sigma, 0.0, 40.0), "stroke_px": (self.stroke_px, -3, 5)}
        for name, (value, lo, hi) in pairs.items():
            if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
                raise ValueError(f"Variation.{name} must be (low, high) with {lo} <= low <= high <= {hi}, "
                                 f"got {value!r}")
        scalars = {"margin_px": (self.margin_px, 0.0, 30.0), "rotate_deg": (self.rotate_deg, 0.0, 45.0),
                   "shear": (self.shear, 0.0, 1.0), "aspect": (self.aspect, 0.0, 1.0),
                   "distort_px": (self.distort_px, 0.0, 20.0), "pressure": (self.pressure, 0.0, 1.0),
                   "background_slope": (self.background_slope, 0.0, 50.0)}
        for name, (value, lo, hi) in scalars.items():
            if not lo <= value <= hi:
                raise ValueError(f"Variation.{name} must be in {lo}..{hi}, got {value!r}")
        if self.ink[1] >= self.background[0]:
            raise ValueError("Variation: ink must stay darker than the background")


class Imager:
    """Turns a grapheme string into one 137 x 236 uint8 image in a given face: pose, distortion, pen and paper.

    `hand=True` draws it the way a hand differs from a font (see okkhor.sources.synth.hand): each glyph jittered, a
    stronger slant, a fine tremor on top of the smooth distortion, the strokes re-inked with a varying pen, and
    paper and scan artefacts. Not thread-safe: it reuses its work buffers from image to image.
    """

    def __init__(self, fonts: Sequence[str | FontSpec], variation: Variation | None = None, em_px: int = 100,
                 hand: HandStyle | None = None):
        from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH
        from okkhor.sources.synth.shaping import FontRenderer

        variation = Variation() if variation is None else variation
        if not isinstance(variation, Variation):
            raise TypeError(f"variation must be a Variation, got {type(variation).__name__}")
        hand = HandStyle() if hand is None else hand
        if not isinstance(hand, HandStyle):
            raise TypeError(f"hand must be a HandStyle, got {type(hand).__name__}")
        specs = [f if isinstance(f, FontSpec) else select_fonts([f])[0] for f in fonts]
        self.variation, self.hand = variation, hand
        self.renderers = [FontRenderer(s, em_px=em_px) for s in specs]
        self.height, self.width = h, w = IMAGE_HEIGHT, IMAGE_WIDTH
        self._x = np.arange(w, dtype=np.float32) - np.float32(w / 2)
        self._y = np.arange(h, dtype=np.float32) - np.float32(h / 2)
        self._kernels = {k: np.ones((k, k), np.uint8) for k in range(2, 8)}
        self._work = np.empty((h, w), np.float32)
        self._coarse_x = np.linspace(self._x[0], self._x[-1], 3)
        self._coarse_y = np.linspace(self._y[0], self._y[-1], 2)
        self._gain_left, self._gain_right = self._upsampler(2, h), np.ascontiguousarray(self._upsampler(3, w).T)
        # paper grain: one fixed Gaussian texture (the same in every process); each image reads a random window
        self._right = lru_cache(maxsize=64)(self._right_rows)   # per imager: a few cell counts recur
        self._grain = np.random.default_rng(GRAIN_SEED).standard_normal((2 * h + 64, 2 * w + 64)).astype(
            np.float32)

    @staticmethod
    def _upsampler(cells: int, size: int) -> np.ndarray:
        from okkhor.sources.synth.hand import upsampler

        return upsampler(cells, size)

    def _right_rows(self, cells_x: int) -> np.ndarray:
        """[cells_x + 2, width]: bicubic upsampling rows, then x, then ones (see _maps)."""
        up = self._upsampler(cells_x, self.width).T
        return np.vstack([up, self._x[None, :], np.ones((1, self.width), np.float32)]).astype(np.float32)

    def _maps(self, fields: np.ndarray, inv: tuple[float, float, float, float], shift: tuple[float, float],
              centre: tuple[float, float], roi: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Remap grids over `roi`: source = inverse pose @ (output + smooth displacement - centre) + source centre.

        The displacement is a bicubic upsampling of coarse `fields` [2, gy, gx]; the whole map is one product of
        a [2 * rows, gx + 2] and a [gx + 2, cols] matrix, since the pose part is linear in x and in y.
        """
        i00, i01, i10, i11 = inv
        rows, cols = roi
        cells_y, cells_x = fields.shape[1:]
        up_y = self._upsampler(cells_y, self.height)[rows]
        h = up_y.shape[0]
        left = np.empty((2 * h, cells_x + 2), np.float32)
        left[:h, :cells_x] = up_y @ (i00 * fields[0] + i01 * fields[1])
        left[h:, :cells_x] = up_y @ (i10 * fields[0] + i11 * fields[1])
        left[:h, cells_x], left[h:, cells_x] = i00, i10
        yc = self._y[rows] - np.float32(centre[1])
        left[:h, cells_x + 1] = i01 * yc + np.float32(shift[0] - i00 * centre[0])
        left[h:, cells_x + 1] = i11 * yc + np.float32(shift[1] - i10 * centre[0])
        maps = left @ self._right(cells_x)[:, cols]
        return maps[:h], maps[h:]

    def __call__(self, text: str, rng: np.random.Generator, face: int = 0, hand: bool = False,
                 out: np.ndarray | None = None) -> np.ndarray:
        import cv2

        from okkhor.sources.synth import hand as steps

        v, hs = self.variation, self.hand
        u = rng.random(20)  # every scalar choice of the image, drawn at once (u[0], u[1] are spare)
        renderer = self.renderers[face]
        if hand:
            placed = renderer.placed(text)
            if rng.random() < hs.headline:
                placed = steps.split_headlines(placed)
            src = steps.compose(placed, steps.glyph_jitter(placed, rng, hs))
            pen = hs.pen_px[0] + (hs.pen_px[1] - hs.pen_px[0]) * float(rng.random())
            tremor = hs.tremor_px * float(rng.random())
            bend = hs.bend_px * float(rng.random()) if hs.bend_px else 0.0  # nothing drawn when it is off
        else:
            src = renderer.render(text)
            pen = tremor = bend = 0.0
        sh, sw = src.shape

        # pose: stretch, shear (slant), rotation; then the largest scale that fits, times a random fill
        a = math.exp(v.aspect * (2 * u[2] - 1))
        shear = (hs.slant if hand else v.shear) * (2 * u[3] - 1)
        theta = math.radians(v.rotate_deg * (2 * u[4] - 1))
        c, s = math.cos(theta), math.sin(theta)
        m00, m01, m10, m11 = c * a, (c * shear - s) / a, s * a, (s * shear + c) / a  # rotate @ shear @ stretch
        half_w = (abs(m00) * sw + abs(m01) * sh) / 2
        half_h = (abs(m10) * sw + abs(m11) * sh) / 2
        amp = (hs.distort_px if hand else v.distort_px) * (0.3 + 0.7 * u[8])
        keep = pen + tremor + bend + (amp if hand else 0.0)  # the hand's extra reach stays inside the margin
        room_w, room_h = self.width / 2 - v.margin_px - keep, self.height / 2 - v.margin_px - keep
        scale = min(room_w / half_w, room_h / half_h) * (v.fill[0] + (v.fill[1] - v.fill[0]) * u[5])
        if hand:
            pen = max(min(pen, hs.pen_share * 2 * half_h * scale), 0.5)
        cx = (room_w - half_w * scale) * (2 * u[6] - 1)  # ink centre, relative to the frame centre
        cy = (room_h - half_h * scale) * (2 * u[7] - 1)
        det = (m00 * m11 - m01 * m10) * scale
        inv = (m11 / det, -m01 / det, -m10 / det, m00 / det)  # inverse of the scaled pose

        # one remap: the inverse pose applied to the output grid displaced by a smooth random field; ink work
        # happens only in the box the ink can reach (pose, distortion, pen and blur included)
        cells = (3 + int(u[9] * 3), 4 + int(u[10] * 4))
        reach = amp + tremor + bend + max(v.stroke_px[1], 0) + pen + 4
        y0, y1 = self.height / 2 + cy - half_h * scale - reach, self.height / 2 + cy + half_h * scale + reach
        x0, x1 = self.width / 2 + cx - half_w * scale - reach, self.width / 2 + cx + half_w * scale + reach
        roi = (slice(max(int(y0), 0), min(int(y1) + 1, self.height)),
               slice(max(int(x0), 0), min(int(x1) + 1, self.width)))
        fields = rng.uniform(-amp, amp, size=(2, *cells)).astype(np.float32)
        if hand:  # multi-scale: the smooth field and (bend_px > 0) one of half its wavelength, bends within a
            # letter, both on a grid three times finer, plus a tremor on that grid
            fine = (3 * cells[0], 3 * cells[1])
            def on_fine(grid: np.ndarray) -> np.ndarray:
                return np.stack([cv2.resize(f, fine[::-1], interpolation=cv2.INTER_CUBIC) for f in grid])

            fields = on_fine(fields)
            if bend:
                fields += on_fine(rng.uniform(-bend, bend, size=(2, 2 * cells[0], 2 * cells[1])).astype(np.float32))
            fields += rng.uniform(-tremor, tremor, size=fields.shape).astype(np.float32)
        mx, my = self._maps(fields, inv, (sw / 2 - 0.5, sh / 2 - 0.5), (cx, cy), roi)
        cov = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

        # pen: a hand re-inks the strokes; a font is drawn thinner or thicker; then softness
        if hand:
            cov = steps.reink(cov, rng, hs, pen)
        else:
            lo, hi = v.stroke_px
            stroke = lo + min(int(u[11] * (hi - lo + 1)), hi - lo)
            if stroke > 0:
                cov = cv2.dilate(cov, self._kernels[stroke + 1])
            elif stroke < 0:
                cov = cv2.erode(cov, self._kernels[1 - stroke])
        sigma = v.blur_sigma[0] + (v.blur_sigma[1] - v.blur_sigma[0]) * u[12]
        if sigma > 0.3:
            cov = cv2.GaussianBlur(cov, (3, 3) if sigma < 0.6 else (5, 5), sigma)

        # ink on paper: page = paper + a gentle gradient; image = page + coverage * pressure * (ink - page)
        ink_lo, ink_hi = hs.ink if hand else v.ink
        ink = ink_lo + (ink_hi - ink_lo) * u[13] ** 1.5
        paper = v.background[0] + (v.background[1] - v.background[0]) * u[14]
        gx = v.background_slope * (2 * u[15] - 1) / self.width
        gy = v.background_slope * (2 * u[16] - 1) / self.height
        page_left = np.stack([np.full(self.height, paper, np.float32), gy * self._y], axis=1)
        work = np.matmul(page_left, np.stack([1 + gx / paper * self._x, np.ones_like(self._x)]), out=self._work)
        coarse_page = paper + gy * self._coarse_y[:, None] + gx * self._coarse_x[None, :]
        fade = rng.uniform(1 - v.pressure, 1, size=coarse_page.shape)
        gain = np.matmul(self._gain_left[roi[0]] @ (fade * (ink - coarse_page) / 255).astype(np.float32),
                         self._gain_right[:, roi[1]])  # coverage -> grey change, smooth: pressure and page shade
        if hand:
            steps.paper_marks(work, rng, hs)
        work[roi] += cov * gain
        noise = v.noise_sigma[0] + (v.noise_sigma[1] - v.noise_sigma[0]) * u[17]
        if noise > 0.5:
            oy = int(u[18] * (self._grain.shape[0] - self.height))
            ox = int(u[19] * (self._grain.shape[1] - self.width))
            cv2.scaleAdd(self._grain[oy:oy + self.height, ox:ox + self.width], noise, work, dst=work)
        if out is None:
            out = np.empty((self.height, self.width), np.uint8)
        cv2.convertScaleAbs(work, dst=out)  # rounds and saturates at 255 (values are >= 0 up to grain)
        if hand:
            steps.scan_marks(out, rng, hs)
        return out


def _image_key(seed: int, split: str, index: int) -> tuple[int, int]:
    return seed, (SPLIT_CODES[split] << 40) | index


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, split, index) only, so any worker draws the same."""
    return np.random.Generator(np.random.Philox(key=np.array(_image_key(seed, split, index), dtype=np.uint64)))


class _ImageRngs:
    """image_rng's streams from one reused generator: re-keying a Philox is cheaper than building one."""

    def __init__(self):
        self._bits = np.random.Philox(0)
        self._gen = np.random.Generator(self._bits)
        self._state = self._bits.state

    def __call__(self, seed: int, split: str, index: int) -> np.random.Generator:
        st = self._state
        st["state"]["key"][:] = _image_key(seed, split, index)
        st["state"]["counter"][:] = 0
        st["buffer_pos"], st["has_uint32"], st["uinteger"] = 4, 0, 0
        self._bits.state = st
        return self._gen


# ----------------------------------------------------------------------------------------------- labels

@dataclass(frozen=True)
class Sample:
    """One image's labels and the string it shows."""

    grapheme: str
    root: int
    vowel: int
    consonant: int
    seen: bool


@lru_cache(maxsize=1)
def unseen_triples() -> tuple[tuple[int, int, int], ...]:
    """Label triples outside the train graphemes that render as a distinct, well-formed syllable, sorted.

    Dropped: triples HarfBuzz shapes as a broken cluster (e.g. ং or ঃ with a vowel sign, অ + া) and triples
    whose string equals another triple's (e.g. root র + ra-phala is written like reph + র).
    """
    from okkhor.sources.synth.shaping import get_renderer

    renderer = get_renderer()
    seen = seen_triples()
    by_string: dict[str, list[tuple[int, int, int]]] = {}
    for triple in all_triples():
        by_string.setdefault(grapheme_string(*triple), []).append(triple)
    out = []
    for text, triples in by_string.items():
        if len(triples) == 1 and triples[0] not in seen:
            # a syllable on a consonant always shapes; only vowel letters and signs as roots need HarfBuzz's word
            if starts_with_consonant(text) or not renderer.is_broken_cluster(text):
                out.append(triples[0])
    return tuple(sorted(out))


def unseen_split(seed: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The unseen triples divided into (train pool, test pool), disjoint, by the seed alone."""
    pool = list(unseen_triples())
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99,))).permutation(len(pool))
    n_test = int(round(len(pool) * UNSEEN_TEST_SHARE))
    test = sorted(pool[i] for i in order[:n_test])
    train = sorted(pool[i] for i in order[n_test:])
    return train, test


def _root_cycle(rng: np.random.Generator, roots: Sequence[int], n: int) -> np.ndarray:
    """n roots: whole shuffled passes over `roots`, so every root appears once n allows it."""
    roots = np.asarray(roots)
    passes = [rng.permutation(roots) for _ in range(-(-n // len(roots)))] if n else []
    return np.concatenate(passes)[:n] if passes else np.zeros(0, np.int64)


def _draw(rng: np.random.Generator, n: int, groups: dict[int, list], weights: dict[int, np.ndarray] | None = None
          ) -> list:
    """n items: roots cycle through `groups` (whole shuffled passes), then an item of the root's group is drawn."""
    roots = _root_cycle(rng, sorted(groups), n)
    picks: list = [None] * n
    for root in sorted(groups):
        where = np.flatnonzero(roots == root)
        if where.size:
            items = groups[root]
            p = None if weights is None else weights[root]
            for i, k in zip(where, rng.choice(len(items), size=where.size, p=p), strict=False):
                picks[i] = items[k]
    return picks


def _seen_samples(rng: np.random.Generator, n: int) -> list[Sample]:
    """Train graphemes (graphemes.csv rows), balanced over roots; rarer diacritics weigh more within a root."""
    rows = known_graphemes()
    vowel_counts = np.bincount([r[2] for r in rows], minlength=NUM_CLASSES[1])
    cons_counts = np.bincount([r[3] for r in rows], minlength=NUM_CLASSES[2])
    groups: dict[int, list] = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    weights = {}
    for root, items in groups.items():
        w = np.array([1 / math.sqrt(vowel_counts[v] * cons_counts[c]) for _, _, v, c in items])
        weights[root] = w / w.sum()
    return [Sample(g, r, v, c, True) for g, r, v, c in _draw(rng, n, groups, weights)]


def _unseen_samples(rng: np.random.Generator, n: int, pool: Sequence[tuple[int, int, int]]) -> list[Sample]:
    """Triples from `pool`, balanced over roots, uniform within a root."""
    if n and not pool:
        raise OkkhorError("no unseen label triples are available")
    groups: dict[int, list] = {}
    for t in pool:
        groups.setdefault(t[0], []).append(t)
    return [Sample(grapheme_string(r, v, c), r, v, c, False) for r, v, c in _draw(rng, n, groups)]


def sample_labels(split: str, n: int, unseen_fraction: float, seed: int) -> list[Sample]:
    """The labels of a split's n images, a function of (seed, split, n, fraction); unseen ones are spread out."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], 1 << 30)))
    n_unseen = int(round(n * unseen_fraction))
    train_pool, test_pool = unseen_split(seed)
    samples = _seen_samples(rng, n - n_unseen) + _unseen_samples(rng, n_unseen,
                                                                 test_pool if split == "test" else train_pool)
    return [samples[i] for i in rng.permutation(n)]


# ----------------------------------------------------------------------------------------------- drawing plan

@dataclass(frozen=True)
class Draw:
    """How one image is drawn: its face (an index into the job's fonts), and whether in the hand style."""

    face: int
    hand: bool
    font_seen: bool = True  # False when the face's family is held out of train


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
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], 2 << 30)))
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


# ----------------------------------------------------------------------------------------------- writing

def _even_chunks(n: int, most: int, least_parts: int = 1) -> list[int]:
    """Sizes of max(ceil(n / most), least_parts) nearly equal parts of n (none when n is 0)."""
    if n == 0:
        return []
    parts = min(max(-(-n // most), least_parts), n)
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def file_rows(n: int, rows_per_file: int | None = None) -> list[int]:
    """Rows of each parquet file of a split of n images.

    With `rows_per_file`, ceil(n / rows_per_file) nearly equal files. By default files of at most 10,042 rows,
    and at least two once the split has 4,000 images: files are the unit of parallel work, and one writer pays
    about 1.7 CPU-seconds per file for the 32,332 columns, so small splits stay whole. The layout depends on n
    alone, never on the worker count, so the files are the same whatever --workers is.
    """
    if rows_per_file is not None:
        return _even_chunks(n, rows_per_file)
    return _even_chunks(n, DEFAULT_ROWS_PER_FILE, 2 if n >= SPLIT_IN_TWO_ROWS else 1)


@dataclass(frozen=True)
class FileTask:
    """One parquet file to make: a split's images [start, start + len(texts))."""

    split: str
    start: int
    texts: tuple[str, ...]
    draws: tuple[Draw, ...]
    path: str


@dataclass(frozen=True)
class _Job:
    seed: int
    fonts: tuple[FontSpec, ...]
    variation: Variation = field(default_factory=Variation)
    hand: HandStyle = field(default_factory=HandStyle)


_STATE: dict = {}


def _single_threaded() -> None:
    """One thread for OpenCV and BLAS: parallelism comes from processes, and threads would only contend."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    _STATE["blas_limit"] = threadpool_limits(1)


def _init_worker(job: _Job, counter) -> None:
    _STATE.clear()
    _single_threaded()
    _STATE.update(imager=Imager(job.fonts, job.variation, hand=job.hand), job=job, counter=counter)


def _make_images(imager: Imager, seed: int, split: str, start: int, texts: Sequence[str],
                 draws: Sequence[Draw]) -> np.ndarray:
    rngs = _STATE.setdefault("rngs", _ImageRngs())
    out = np.empty((len(texts), imager.height, imager.width), np.uint8)
    for i, (text, d) in enumerate(zip(texts, draws, strict=False)):
        imager(text, rngs(seed, split, start + i), d.face, d.hand, out=out[i])
    return out


def _write_file(task: FileTask) -> tuple[str, int]:
    """Render one file's images row group by row group and stream them into its parquet file."""
    from okkhor.io.kaggle import N_PIXELS, ImageParquetWriter, pixel_columns

    imager, job, counter = _STATE["imager"], _STATE["job"], _STATE["counter"]
    block = 256  # images rendered at a time, then moved into the row group's column-major buffer
    with ImageParquetWriter(task.path) as writer:
        done = 0
        for rows in _even_chunks(len(task.texts), ROW_GROUP_ROWS):
            columns = np.empty((N_PIXELS, rows), np.uint8)
            for b in range(0, rows, block):
                part = slice(done + b, done + min(rows, b + block))
                texts = task.texts[part]
                images = _make_images(imager, job.seed, task.split, task.start + done + b, texts, task.draws[part])
                pixel_columns(images, out=columns[:, b:b + len(texts)])
                if counter is not None:
                    with counter.get_lock():
                        counter.value += len(texts)
            writer.write_columns([f"{task.split.capitalize()}_{task.start + done + i}" for i in range(rows)], columns)
            done += rows
    return task.path, len(task.texts)


def _write_label_files(out_dir: Path, train: list[Sample], test: list[Sample], draws: dict[str, list[Draw]],
                       fonts: Sequence[FontSpec]) -> None:
    import pandas as pd

    from okkhor.io.layout import write_split_csvs
    from okkhor.utils.files import atomic_path

    def labels(split: str, samples: list[Sample], seen: bool = False) -> "pd.DataFrame":
        columns = {
            "image_id": [f"{split.capitalize()}_{i}" for i in range(len(samples))],
            "grapheme_root": [s.root for s in samples],
            "vowel_diacritic": [s.vowel for s in samples],
            "consonant_diacritic": [s.consonant for s in samples],
            "grapheme": [s.grapheme for s in samples],
        }
        if seen:
            columns["seen"] = [s.seen for s in samples]
        columns["font"] = [fonts[d.face].family for d in draws[split]]
        columns["font_seen"] = [d.font_seen for d in draws[split]]
        return pd.DataFrame(columns)

    write_split_csvs(out_dir, "train", labels("train", train), TARGETS)
    write_split_csvs(out_dir, "test", labels("test", test, seen=True), TARGETS)
    with atomic_path(out_dir / "class_map.csv") as tmp:
        tmp.write_bytes(resources.files("okkhor.resources").joinpath("class_map.csv").read_bytes())


def _existing_outputs(out_dir: Path) -> list[Path]:
    from okkhor.io.kaggle import image_parquet_files

    found = [out_dir / n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    return found + image_parquet_files(out_dir, "train") + image_parquet_files(out_dir, "test")


def _run_tasks(tasks: list[FileTask], job: _Job, workers: int, total: int, progress: bool) -> None:
    """Make every file, in this process or in `workers` processes, with one progress bar over all images."""
    import multiprocessing as mp

    from okkhor.utils.progress import progress as bar

    tasks = sorted(tasks, key=lambda t: -len(t.texts))  # longest first: workers finish close together
    with bar(total=total, desc="synth", unit="img", disable=not progress) as pbar:
        if workers <= 1 or len(tasks) <= 1:
            import cv2

            threads = cv2.getNumThreads()
            counter = mp.Value("q", 0, lock=True)
            try:
                _init_worker(job, counter)
                for task in tasks:
                    _write_file(task)
                    pbar.update(counter.value - pbar.n)
            finally:
                if "blas_limit" in _STATE:
                    _STATE["blas_limit"].restore_original_limits()
                _STATE.clear()
                cv2.setNumThreads(threads)
            return
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")  # fork would copy the caller's threads (BLAS, torch) into the workers
        counter = ctx.Value("q", 0, lock=True)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(job, counter)) as pool:
            pending = {pool.submit(_write_file, t) for t in tasks}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raises a worker's error here
                    pbar.update(counter.value - pbar.n)
            except BrokenProcessPool:
                raise OkkhorError("synth: a worker process died; when calling synthesize() from a script, guard the "
                                  "call with `if __name__ == \"__main__\":` (workers start by importing it), or "
                                  "use workers=1") from None
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise OkkhorError(f"{name} must be a number in 0..1, got {value!r}")
    return float(value)


def _check_count(name: str, value: int, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise OkkhorError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _check_preview(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OkkhorError(f"{path}: the preview must be a .png file")
    return path


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise OkkhorError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def synthesize(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0, unseen_test_fraction: float = 0.0,
               train_unseen_fraction: float = 0.0, fonts: Sequence[str] | str | None = None,
               workers: int | None = None, preview: str | Path | None = None,
               rows_per_file: int | None = None, overwrite: bool = False,
               variation: Variation | None = None, progress: bool = True,
               holdout_fonts: Sequence[str] | str | None = None, holdout_share: float | None = None,
               fonts_dir: str | Path | None = None, style: str = "mix", hand: HandStyle | None = None) -> dict:
    """Write a synthetic dataset in the competition's format into `out_dir` and return a summary.

    Files: train.csv, train_image_data_<i>.parquet, test.csv, test_image_data_<i>.parquet, class_map.csv,
    sample_submission.csv and test_labels.csv (labels, grapheme and `seen` for local scoring); train.csv and
    test_labels.csv also name each image's font family (`font`) and whether train uses it (`font_seen`). The
    same seed gives byte-identical files whatever `workers` is. Unseen triples of test never occur in train.

    `holdout_fonts`: font families train never uses; test images are drawn in them (all of them, or a share
    `holdout_share`, the rest in the train families). `fonts_dir`: a folder of the user's own .ttf/.otf files,
    added to the shipped fonts (files that are unusable are left out, each with a warning in the summary).
    `style`: `font` (a font's outline, distorted), `hand` (see Imager) or `mix` (each image's own choice).
    """
    from okkhor.sources.synth.shaping import check_face, self_check_fonts

    start = time.perf_counter()
    n_train = _check_count("train", n_train)
    n_test = _check_count("test", n_test)
    if n_train + n_test == 0:
        raise OkkhorError("nothing to make: --train and --test are both 0")
    seed = _check_count("seed", seed, 0, 2**63 - 1)
    preview = None if preview is None else _check_preview(preview)
    unseen_test_fraction = _check_fraction("unseen-test-fraction", unseen_test_fraction)
    train_unseen_fraction = _check_fraction("train-unseen-fraction", train_unseen_fraction)
    if holdout_share is not None:
        holdout_share = _check_fraction("holdout-share", holdout_share)
        if holdout_fonts is None:
            raise OkkhorError("holdout-share needs holdout-fonts (the families to hold out)")
    style = _check_style(style)
    if rows_per_file is not None:
        rows_per_file = _check_count("rows-per-file", rows_per_file, 1, MAX_ROWS_PER_FILE)
    workers = (os.cpu_count() or 1) if workers is None else _check_count("workers", workers, 1)
    variation = Variation() if variation is None else variation
    hand = HandStyle() if hand is None else hand
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OkkhorError(f"{out_dir}: exists and is not a folder")
    existing = _existing_outputs(out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise OkkhorError(f"{out_dir}: already holds a dataset ({existing[0].name}); pass --overwrite to replace it")

    user_fonts, font_warnings = ([], []) if fonts_dir is None else load_font_dir(
        fonts_dir, taken=[f.name for f in discover_fonts()[0]], check=check_face)
    specs = select_fonts(fonts, extra=user_fonts)
    held = holdout_faces(specs, holdout_fonts)
    renderers = self_check_fonts(specs)
    job = _Job(seed, tuple(specs), variation, hand)

    samples = {"train": sample_labels("train", n_train, train_unseen_fraction, seed),
               "test": sample_labels("test", n_test, unseen_test_fraction, seed)}
    share = 1.0 if holdout_share is None else holdout_share
    draws = {split: plan_draws(split, items, seed, renderers, held, share, style)
             for split, items in samples.items()}
    tasks: list[FileTask] = []
    for split, items in samples.items():
        begin = 0
        for index, rows in enumerate(file_rows(len(items), rows_per_file)):
            texts = tuple(s.grapheme for s in items[begin:begin + rows])
            tasks.append(FileTask(split, begin, texts, tuple(draws[split][begin:begin + rows]),
                                  str(out_dir / f"{split}_image_data_{index}.parquet")))
            begin += rows
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in existing:  # only our own file names, and only with overwrite
        stale.unlink()
    _run_tasks(tasks, job, workers, n_train + n_test, progress)
    _write_label_files(out_dir, samples["train"], samples["test"], draws, specs)
    seconds = time.perf_counter() - start
    if preview is not None:
        write_preview(preview, samples, seed, fonts=specs, variation=variation, draws=draws, hand=hand)
    return {
        "out_dir": str(out_dir),
        "train": n_train, "test": n_test,
        "train_unseen": sum(not s.seen for s in samples["train"]),
        "test_unseen": sum(not s.seen for s in samples["test"]),
        "test_font_unseen": sum(not d.font_seen for d in draws["test"]),
        "holdout_fonts": list(dict.fromkeys(specs[i].family for i in held)),
        "style": style,
        "hand_images": sum(d.hand for split in draws.values() for d in split),
        "files": [Path(t.path).name for t in tasks],
        "fonts": [f.name for f in specs],
        "font_notes": list(discover_fonts()[1]),
        "font_warnings": font_warnings,
        "workers": min(workers, len(tasks)),
        "seconds": round(seconds, 2),
        "images_per_s": round((n_train + n_test) / seconds, 1),
        "variation": asdict(variation),
        "hand": asdict(hand),
    }


def write_preview(path: str | Path, samples: dict[str, Sequence[Sample]], seed: int,
                  fonts: Sequence[str | FontSpec] | None = None, variation: Variation | None = None, rows: int = 5,
                  cols: int = 6, draws: dict[str, Sequence[Draw]] | None = None,
                  hand: HandStyle | None = None) -> Path:
    """A PNG grid of dataset images (re-rendered from their seeds, so identical to the files), titled with labels.

    Titles give root/vowel/consonant as integers (matplotlib cannot shape Bengali), the image id, 'U' for an
    unseen triple, then the font family ('new' when held out of train) and 'hand' for the hand style.
    Without `draws`, every image is drawn in style mix from all the fonts.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    from okkhor.utils.files import atomic_path

    path = _check_preview(path)
    picks: list[tuple[str, int]] = []
    splits = [(split, len(items)) for split, items in samples.items() if len(items)]
    for k, (split, n) in enumerate(splits):  # an even share of the grid per split, spread over its images
        share = rows * cols // len(splits) + (1 if k < rows * cols % len(splits) else 0)
        picks += [(split, int(i)) for i in np.unique(np.linspace(0, n - 1, min(share, n)).astype(int))]
    specs = [f if isinstance(f, FontSpec) else select_fonts([f])[0] for f in fonts] if fonts else select_fonts()
    imager = Imager(specs, variation, hand=hand)
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
                                                            style=_check_style(style)), strict=False)):
        yield sample, imager(sample.grapheme, image_rng(seed, split, i), d.face, d.hand)
