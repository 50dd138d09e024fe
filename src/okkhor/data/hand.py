"""Handwriting-like synthesis steps: per-glyph jitter, stroke re-inking, and paper and scan artefacts.

Each step is a small function of (input, rng): the same input and random stream give the same output in any
process, which keeps synthesis byte-identical whatever the worker count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Placed = Sequence[tuple[np.ndarray, int, int]]  # (coverage bitmap, top, left) per glyph, see FontRenderer.placed


@dataclass(frozen=True)
class HandStyle:
    """Ranges of the ways a hand differs from a font; every hand-style image draws its own values from these."""

    glyph_shift: float = 0.07  # +- offset of a mark or sign, as a fraction of the text's height
    base_shift: float = 0.02  # +- offset of the base glyph (the largest), same unit
    glyph_scale: float = 0.12  # +- log of each glyph's own scale
    glyph_rotate_deg: float = 7.0  # +- rotation of each glyph about its own centre
    slant: float = 0.35  # +- horizontal shear of the whole text (replaces the font style's shear)
    pen_px: tuple[float, float] = (1.0, 3.6)  # pen radius in output pixels
    pen_vary: float = 0.35  # the radius varies along the strokes by up to this fraction (pressure)
    gaps: float = 0.8  # mean number of pen-lift gaps per image
    gap_px: tuple[float, float] = (1.0, 3.0)  # a gap's length beyond the pen's width, each side
    tremor_px: float = 1.2  # largest displacement of the fine (tremor) distortion, in output pixels
    ink: tuple[float, float] = (0.0, 60.0)  # grey level of the ink (0 black)
    artefacts: float = 0.12  # chance of each paper and scan artefact: blotch, ruled line, speckle, JPEG, lighting

    def __post_init__(self) -> None:
        scalars = {"glyph_shift": (self.glyph_shift, 0.0, 0.5), "base_shift": (self.base_shift, 0.0, 0.5),
                   "glyph_scale": (self.glyph_scale, 0.0, 1.0), "glyph_rotate_deg": (self.glyph_rotate_deg, 0, 45),
                   "slant": (self.slant, 0.0, 1.0), "pen_vary": (self.pen_vary, 0.0, 0.9),
                   "gaps": (self.gaps, 0.0, 10.0), "tremor_px": (self.tremor_px, 0.0, 10.0),
                   "artefacts": (self.artefacts, 0.0, 1.0)}
        for name, (value, lo, hi) in scalars.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"HandStyle.{name} must be a number in {lo}..{hi}, got {value!r}")
        pairs = {"pen_px": (self.pen_px, 0.5, 8.0), "gap_px": (self.gap_px, 0.0, 10.0),
                 "ink": (self.ink, 0.0, 200.0)}
        for name, (value, lo, hi) in pairs.items():
            if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
                raise ValueError(f"HandStyle.{name} must be (low, high) with {lo} <= low <= high <= {hi}, "
                                 f"got {value!r}")


# ----------------------------------------------------------------------------------------------- per-glyph jitter

def glyph_jitter(placed: Placed, rng: np.random.Generator, style: HandStyle) -> np.ndarray:
    """[n, 4] per glyph: (dx, dy) in pixels, log scale, rotation in radians. The largest glyph is the base and
    moves least; marks and signs move more (hands misplace diacritics)."""
    n = len(placed)
    u = rng.uniform(-1.0, 1.0, size=(n, 4))
    if n == 0:
        return u
    top = min(t for _, t, _ in placed)
    height = max(t + b.shape[0] for b, t, _ in placed) - top
    shift = np.full(n, style.glyph_shift * height)
    shift[int(np.argmax([b.size for b, _, _ in placed]))] = style.base_shift * height
    return np.column_stack([u[:, 0] * shift, u[:, 1] * shift, u[:, 2] * style.glyph_scale,
                            u[:, 3] * math.radians(style.glyph_rotate_deg)])


def compose(placed: Placed, jitter: np.ndarray) -> np.ndarray:
    """Ink coverage (uint8) of the glyphs, each moved, scaled and rotated about its own centre by its jitter row,
    cropped to the ink."""
    import cv2

    if not len(placed):
        return np.zeros((1, 1), np.uint8)
    mats, corners = [], []
    for (b, top, left), (dx, dy, log_s, rot) in zip(placed, jitter):
        h, w = b.shape
        s = math.exp(log_s)
        c, sn = math.cos(rot) * s, math.sin(rot) * s
        cx, cy = left + w / 2, top + h / 2
        # bitmap pixel (u, v) -> page: R S ((left + u, top + v) - centre) + centre + shift
        m = np.array([[c, -sn, cx + dx + c * (left - cx) - sn * (top - cy)],
                      [sn, c, cy + dy + sn * (left - cx) + c * (top - cy)]])
        mats.append(m)
        corners.append(m @ np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], np.float64))
    pts = np.concatenate(corners, axis=1)
    x0, y0 = np.floor(pts.min(axis=1)) - 1
    x1, y1 = np.ceil(pts.max(axis=1)) + 1
    size = (int(x1 - x0), int(y1 - y0))
    out = np.zeros((size[1], size[0]), np.uint8)
    for (b, _, _), m in zip(placed, mats):
        m = m.copy()
        m[:, 2] -= (x0, y0)
        np.maximum(out, cv2.warpAffine(b, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), out=out)
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    return out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if rows.size else np.zeros((1, 1), np.uint8)


# ----------------------------------------------------------------------------------------------- re-inking

def centreline(mask: np.ndarray) -> np.ndarray:
    """The centreline of a binary uint8 mask: the ridge of its distance transform (pixels within half a pixel of
    the largest distance around them), without the short branches towards corners and edge noise (pixels less
    than half as far from the background as the stroke's middle nearby)."""
    import cv2

    d = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    near = cv2.dilate(d, np.ones((3, 3), np.uint8))
    wide = cv2.dilate(d, np.ones((7, 7), np.uint8))
    return (d >= near - 0.5) & (d >= 0.5 * wide) & (d > 0)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int] = (3, 4)) -> np.ndarray:
    """A smooth random field in -1..1 over `shape`: bicubic upsampling of uniform values on a coarse grid."""
    import cv2

    return cv2.resize(rng.uniform(-1, 1, size=cells).astype(np.float32), (shape[1], shape[0]),
                      interpolation=cv2.INTER_CUBIC)


def reink(coverage: np.ndarray, rng: np.random.Generator, style: HandStyle, pen_px: float) -> np.ndarray:
    """Redraw the strokes of a uint8 coverage image with a pen: its centreline, broken by pen-lift gaps, inked to
    a radius that varies smoothly along the strokes around `pen_px`. Returns uint8 coverage of the same shape."""
    import cv2

    mask = (coverage > 127).astype(np.uint8)
    if not mask.any():
        return coverage
    ridge = centreline(mask)
    spine = np.where(ridge, 0, 255).astype(np.uint8)  # distanceTransform measures the distance to zeros
    n_gaps = int(rng.poisson(style.gaps))
    if n_gaps:
        where = np.flatnonzero(ridge)
        for k in rng.choice(where.size, size=min(n_gaps, where.size), replace=False):
            y, x = divmod(int(where[k]), ridge.shape[1])
            radius = pen_px + style.gap_px[0] + (style.gap_px[1] - style.gap_px[0]) * rng.random()
            cv2.circle(spine, (x, y), int(round(radius)), 255, -1)
    if spine.min() > 0:  # every ridge pixel fell in a gap: keep the strokes
        spine[ridge] = 0
    dist = cv2.distanceTransform(spine, cv2.DIST_L2, 3)
    radius = pen_px * (1 + style.pen_vary * smooth_field(rng, dist.shape, (3 + int(rng.integers(3)), 5)))
    ink = np.clip(radius - dist + 0.5, 0.0, 1.0)
    return cv2.convertScaleAbs(ink, alpha=255.0)


# ----------------------------------------------------------------------------------------------- paper and scan

def paper_marks(page: np.ndarray, rng: np.random.Generator, style: HandStyle) -> None:
    """Marks on the page before the ink, in place: a faint ruled line, a soft blotch, uneven lighting."""
    import cv2

    h, w = page.shape
    u = rng.random(3)
    if u[0] < style.artefacts:  # a ruled line, nearly horizontal, anywhere on the page
        y = rng.uniform(0.1, 0.9) * h
        tilt = rng.uniform(-0.04, 0.04) * w
        line = np.zeros((h, w), np.uint8)
        cv2.line(line, (0, int(y - tilt)), (w - 1, int(y + tilt)), 255, int(rng.integers(1, 3)), cv2.LINE_AA)
        page -= line.astype(np.float32) * np.float32(rng.uniform(10, 45) / 255)
    if u[1] < style.artefacts:  # a soft stain
        blot = np.zeros((h, w), np.uint8)
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.uniform(6, 40)), int(rng.uniform(6, 30)))
        cv2.ellipse(blot, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), float(rng.uniform(2, 8)))
        page -= blot.astype(np.float32) * np.float32(rng.uniform(5, 30) / 255)
    if u[2] < style.artefacts:  # uneven lighting: a smooth shade over the whole page
        page *= 1 + np.float32(rng.uniform(0.03, 0.12)) * smooth_field(rng, (h, w), (2, 3))


def scan_marks(image: np.ndarray, rng: np.random.Generator, style: HandStyle) -> None:
    """Scanner artefacts on the finished uint8 image, in place: speckle, then JPEG compression."""
    import cv2

    u = rng.random(2)
    if u[0] < style.artefacts:  # dust: a few dark specks and light dropouts
        n = int(rng.integers(5, 40))
        ys, xs = rng.integers(0, image.shape[0], n), rng.integers(0, image.shape[1], n)
        image[ys, xs] = np.where(rng.random(n) < 0.7, rng.integers(0, 120, n), 255).astype(np.uint8)
    if u[1] < style.artefacts:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 70))])
        image[...] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
