"""Handwriting-like synthesis steps: per-glyph jitter, stroke re-inking, and paper and scan artefacts.

Each step is a small function of (input, rng): the same input and random stream give the same output in any
process, which keeps synthesis byte-identical whatever the worker count.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Placed = Sequence[tuple[np.ndarray, int, int]]  # (coverage bitmap, top, left) per glyph, see FontRenderer.placed


@dataclass(frozen=True)
class HandStyle:
    """Ranges of the ways a hand differs from a font; every hand-style image draws its own values from these."""

    glyph_shift: float = 0.07  # +- offset of each mark or sign from the base, as a fraction of the text's height
    glyph_scale: float = 0.12  # +- log of each mark's own scale
    glyph_rotate_deg: float = 7.0  # +- rotation of each mark about its own centre
    slant: float = 0.35  # +- horizontal shear of the whole text (replaces the font style's shear)
    pen_px: tuple[float, float] = (1.0, 3.6)  # pen radius in output pixels
    pen_vary: float = 0.35  # the radius varies along the strokes by up to this fraction (pressure)
    gaps: float = 0.8  # mean number of pen-lift gaps per image
    gap_px: tuple[float, float] = (1.0, 3.0)  # a gap's length beyond the pen's width, each side
    tremor_px: float = 1.2  # largest displacement of the fine (tremor) distortion, in output pixels
    ink: tuple[float, float] = (0.0, 60.0)  # grey level of the ink (0 black)
    artefacts: float = 0.12  # chance of each paper and scan artefact: blotch, ruled line, speckle, JPEG, lighting

    def __post_init__(self) -> None:
        scalars = {"glyph_shift": (self.glyph_shift, 0.0, 0.5),
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
    stays put (the whole text's pose moves it); marks and signs move against it (hands misplace diacritics)."""
    n = len(placed)
    u = rng.uniform(-1.0, 1.0, size=(n, 4))
    if n == 0:
        return u
    top = min(t for _, t, _ in placed)
    height = max(t + b.shape[0] for b, t, _ in placed) - top
    u *= (style.glyph_shift * height, style.glyph_shift * height, style.glyph_scale,
          math.radians(style.glyph_rotate_deg))
    u[max(range(n), key=lambda i: placed[i][0].size)] = 0.0
    return u


def compose(placed: Placed, jitter: np.ndarray) -> np.ndarray:
    """Ink coverage (uint8) of the glyphs, each moved, scaled and rotated about its own centre by its jitter row
    (a row of zeros leaves a glyph as it is), in the box of the moved glyphs."""
    import cv2

    if not len(placed):
        return np.zeros((1, 1), np.uint8)
    mats, boxes = [], []
    for (b, top, left), (dx, dy, log_s, rot) in zip(placed, jitter):
        h, w = b.shape
        if dx == dy == log_s == rot == 0.0:  # not moved (the base): laid as it is
            mats.append(None)
            boxes.append((left, top, left + w, top + h))
            continue
        s = math.exp(log_s)
        c, sn = math.cos(rot) * s, math.sin(rot) * s
        cx, cy = left + w / 2, top + h / 2
        # bitmap pixel (u, v) -> page: R S ((left + u, top + v) - centre) + centre + shift
        tx = cx + dx + c * (left - cx) - sn * (top - cy)
        ty = cy + dy + sn * (left - cx) + c * (top - cy)
        xs = (tx, tx + c * w, tx - sn * h, tx + c * w - sn * h)
        ys = (ty, ty + sn * w, ty + c * h, ty + sn * w + c * h)
        mats.append([[c, -sn, tx], [sn, c, ty]])
        boxes.append((math.floor(min(xs)) - 1, math.floor(min(ys)) - 1, math.ceil(max(xs)) + 1,
                      math.ceil(max(ys)) + 1))
    bx0, by0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    out = np.zeros((max(b[3] for b in boxes) - by0, max(b[2] for b in boxes) - bx0), np.uint8)
    for (b, _, _), m, (x0, y0, x1, y1) in zip(placed, mats, boxes):
        view = out[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        if m is not None:  # a moved glyph is warped into its own box only, then laid on the page
            m = np.array(m)
            m[:, 2] -= (x0, y0)
            b = cv2.warpAffine(b, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        np.maximum(view, b, out=view)
    return out


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


@functools.lru_cache(maxsize=256)
def upsampler(cells: int, size: int) -> np.ndarray:
    """[size, cells] matrix of bicubic upsampling from `cells` control points (the linear map of cv2.resize)."""
    import cv2

    eye = np.eye(cells, dtype=np.float32)
    return np.ascontiguousarray(cv2.resize(eye, (size, cells), interpolation=cv2.INTER_CUBIC).T)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int] = (3, 4)) -> np.ndarray:
    """A smooth random field in about -1..1 over `shape`: bicubic upsampling of uniform values on a coarse grid."""
    grid = rng.uniform(-1, 1, size=cells).astype(np.float32)
    return upsampler(cells[0], shape[0]) @ grid @ upsampler(cells[1], shape[1]).T


def reink(coverage: np.ndarray, rng: np.random.Generator, style: HandStyle, pen_px: float) -> np.ndarray:
    """Redraw the strokes of a uint8 coverage image with a pen: its centreline, broken by pen-lift gaps, inked to
    a radius that varies smoothly along the strokes around `pen_px`. Returns uint8 coverage of the same shape."""
    import cv2

    mask = cv2.threshold(coverage, 127, 1, cv2.THRESH_BINARY)[1]
    if not mask.any():
        return coverage
    ridge = centreline(mask)
    spine = np.where(ridge, 0, 255).astype(np.uint8)  # distanceTransform measures the distance to zeros
    n_gaps = int(rng.poisson(style.gaps))
    if n_gaps:
        where = np.flatnonzero(ridge)
        for k in rng.integers(0, where.size, size=n_gaps):
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
    """Marks on the float32 page before the ink, in place: a faint ruled line, a soft stain, uneven lighting."""
    import cv2

    h, w = page.shape
    u = rng.random(3)
    if u[0] < style.artefacts:  # a ruled line, nearly horizontal, anywhere on the page
        y, tilt = rng.uniform(0.1, 0.9) * h, rng.uniform(-0.04, 0.04) * w
        grey = float(page[min(int(y), h - 1), w // 2]) - rng.uniform(10, 45)
        cv2.line(page, (0, int(y - tilt)), (w - 1, int(y + tilt)), grey, int(rng.integers(1, 3)), cv2.LINE_AA)
    if u[1] < style.artefacts:  # a soft stain: a blurred ellipse, worked on in its own box only
        ax, ay = int(rng.uniform(6, 40)), int(rng.uniform(6, 30))
        sigma = float(rng.uniform(2, 8))
        pad = max(ax, ay) + int(3 * sigma) + 1
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        blot = np.zeros((2 * pad + 1, 2 * pad + 1), np.float32)
        cv2.ellipse(blot, (pad, pad), (ax, ay), float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(5, 30)), -1)
        blot = cv2.GaussianBlur(blot, (0, 0), sigma)
        y0, x0 = cy - pad, cx - pad
        ys, xs = slice(max(y0, 0), min(y0 + blot.shape[0], h)), slice(max(x0, 0), min(x0 + blot.shape[1], w))
        page[ys, xs] -= blot[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    if u[2] < style.artefacts:  # uneven lighting: a smooth shadow over the page, up to 3..12% darker
        page *= 1 - np.float32(rng.uniform(0.03, 0.12) / 2) * (1 + smooth_field(rng, (h, w), (2, 3)))


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
