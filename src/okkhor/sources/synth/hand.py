"""Handwriting-like synthesis steps: per-glyph jitter, stroke re-inking, and paper and scan artefacts."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Each step is a small function of (input, rng): the same input and random stream give the same output in any
# process, which keeps synthesis byte-identical whatever the worker count.
Placed = Sequence[tuple[np.ndarray, int, int]]  # (coverage bitmap, top, left) per glyph, see FontRenderer.placed


@dataclass(frozen=True)
class HandStyle:
    """Ranges of the ways a hand differs from a font; every hand-style image draws its own values from these."""

    glyph_shift: float = 0.07  # +- offset of each mark or sign from the base, as a fraction of the text's height
    glyph_scale: float = 0.12  # +- log of each mark's own scale
    glyph_rotate_deg: float = 7.0  # +- rotation of each mark about its own centre
    headline: float = 0.5  # chance that the headline (matra) is a stroke of its own, jittered like a mark
    slant: float = 0.35  # +- horizontal shear of the whole text (replaces the font style's shear)
    distort_px: float = 5.0  # largest displacement of the smooth distortion (replaces the font style's)
    # largest displacement of a second field at half the smooth one's wavelength (bends within a letter); off by
    # default: at 5 px it moved a held-out font's seen score from 0.886 to 0.858 (docs/generalization.md)
    bend_px: float = 0.0
    pen_px: tuple[float, float] = (1.0, 4.5)  # pen radius in output pixels
    pen_share: float = 0.04  # and at most this fraction of the text's height (small text, thinner pen)
    pen_vary: float = 0.35  # the radius varies along the strokes by up to this fraction (pressure)
    gaps: float = 0.8  # mean number of pen-lift gaps per image
    gap_px: tuple[float, float] = (1.0, 3.0)  # a gap's length beyond the pen's width, each side
    tremor_px: float = 1.2  # largest displacement of the fine (tremor) distortion, in output pixels
    ink: tuple[float, float] = (0.0, 60.0)  # grey level of the ink (0 black)
    artefacts: float = 0.12  # chance of each paper and scan artefact: blotch, ruled line, speckle, JPEG, lighting

    def __post_init__(self) -> None:
        scalars = {"glyph_shift": (self.glyph_shift, 0.0, 0.5), "glyph_scale": (self.glyph_scale, 0.0, 1.0),
                   "glyph_rotate_deg": (self.glyph_rotate_deg, 0, 45), "slant": (self.slant, 0.0, 1.0),
                   "distort_px": (self.distort_px, 0.0, 20.0), "bend_px": (self.bend_px, 0.0, 20.0),
                   "headline": (self.headline, 0.0, 1.0),
                   "pen_share": (self.pen_share, 0.005, 0.2), "pen_vary": (self.pen_vary, 0.0, 0.9),
                   "gaps": (self.gaps, 0.0, 10.0),
                   "tremor_px": (self.tremor_px, 0.0, 10.0), "artefacts": (self.artefacts, 0.0, 1.0)}
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

def split_headlines(placed: Placed, top_share: float = 0.3, fill: float = 0.5) -> list[tuple[np.ndarray, int, int]]:
    """The glyphs with each one's headline (matra) cut off as a piece of its own, appended after the glyphs.

    A glyph's headline: the rows in the top `top_share` of the text whose ink spans at least `fill` of the glyph's
    width, one pixel more above and below. Glyphs under 40% of the text's height, and glyphs without such rows
    or with no thin band of them (the next row as full), stay whole.
    """
    if not len(placed):
        return list(placed)
    text_top = min(t for _, t, _ in placed)
    height = max(t + b.shape[0] for b, t, _ in placed) - text_top
    bodies, lines = [], []
    for b, top, left in placed:
        limit = min(int(text_top + top_share * height) - top, b.shape[0])
        full = (b > 127).mean(axis=1) >= fill
        rows = np.flatnonzero(full[:max(limit, 0)])
        if b.shape[0] < 0.4 * height or not 1 <= rows.size <= 0.2 * height or full[min(rows[-1] + 1, b.shape[0] - 1)]:
            bodies.append((b, top, left))  # a small mark, no headline, or no thin one (a solid blob)
            continue
        r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, b.shape[0])
        body = b.copy()
        body[r0:r1] = 0
        bodies.append((body, top, left))
        lines.append((np.ascontiguousarray(b[r0:r1]), top + r0, left))
    return bodies + lines


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
    for (b, top, left), (dx, dy, log_s, rot) in zip(placed, jitter, strict=False):
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
    for (b, _, _), m, (x0, y0, x1, y1) in zip(placed, mats, boxes, strict=False):
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


def drop_crumbs(mask: np.ndarray, spine: np.ndarray, shortest: float, reach: float) -> None:
    """Erase from `spine` (0 = centreline) the pieces of centreline that, redrawn, would be dots beside a stroke:
    shorter than about `shortest` pixels, farther than `reach` pixels from every longer piece, and sharing their
    ink blob with one (a gap's leftovers, ridge noise at stroke ends). Dots are parts of letters (ড / ড়);
    a dot of its own (its own ink blob) keeps its centreline."""
    import cv2

    left = spine == 0
    joined = cv2.dilate(left.astype(np.uint8), np.ones((3, 3), np.uint8))  # pieces 1 px apart are one piece
    m, piece, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < 3 * (shortest + 2)
    small[0] = False
    if not small.any() or small.all():
        return
    size = 2 * int(math.ceil(reach)) + 1
    near = cv2.dilate((left & ~small[piece]).astype(np.uint8),
                      cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))).astype(bool)
    touching = np.zeros(m, bool)
    touching[piece[left & near]] = True
    crumbs = np.flatnonzero(small & ~touching)
    if not crumbs.size:
        return
    _, blob = cv2.connectedComponents(mask, connectivity=8)  # the ink blobs that hold a longer piece
    with_long = np.zeros(int(blob.max()) + 1, bool)
    with_long[blob[left & ~small[piece]]] = True
    blob_of = np.zeros(m, np.int64)
    blob_of[piece[left]] = blob[left]
    crumbs = crumbs[with_long[blob_of[crumbs]]]
    if crumbs.size:
        spine[left & np.isin(piece, crumbs)] = 255


def reink(coverage: np.ndarray, rng: np.random.Generator, style: HandStyle, pen_px: float) -> np.ndarray:
    """Redraw the strokes of a uint8 coverage image with a pen: its centreline, broken by pen-lift gaps, inked to
    a radius that varies smoothly along the strokes around `pen_px`. Returns uint8 coverage of the same shape."""
    import cv2

    full = cv2.threshold(coverage, 127, 1, cv2.THRESH_BINARY)[1]
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if not rows.size:
        return coverage
    # work in the box the new strokes can reach: the ink's box and the widest pen around it
    pad = int(math.ceil(pen_px * (1 + style.pen_vary))) + 2
    box = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1), slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
    mask = full[box]
    ridge = centreline(mask)
    spine = np.where(ridge, 0, 255).astype(np.uint8)  # distanceTransform measures the distance to zeros
    n_gaps = int(rng.poisson(style.gaps))
    if n_gaps:
        where = np.flatnonzero(ridge)
        for k in rng.integers(0, where.size, size=n_gaps):
            y, x = divmod(int(where[k]), ridge.shape[1])
            radius = pen_px + style.gap_px[0] + (style.gap_px[1] - style.gap_px[0]) * rng.random()
            cv2.circle(spine, (x, y), int(round(radius)), 255, -1)
    drop_crumbs(mask, spine, 2 * pen_px + 4, 2 * pen_px * (1 + style.pen_vary) + 1)
    if spine.min() > 0:  # every ridge pixel fell in a gap: keep the strokes
        spine[ridge] = 0
    dist = cv2.distanceTransform(spine, cv2.DIST_L2, 3)
    radius = pen_px * (1 + style.pen_vary * smooth_field(rng, dist.shape, (3 + int(rng.integers(3)), 5)))
    out = np.zeros_like(coverage)
    out[box] = cv2.convertScaleAbs(np.clip(radius - dist + 0.5, 0.0, 1.0), alpha=255.0)
    return out


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
    if u[0] < style.artefacts:  # dust: a few faint specks and light dropouts, too faint to pass for ink
        n = int(rng.integers(5, 40))
        ys, xs = rng.integers(0, image.shape[0], n), rng.integers(0, image.shape[1], n)
        image[ys, xs] = np.where(rng.random(n) < 0.7, rng.integers(180, 230, n), 255).astype(np.uint8)
    if u[1] < style.artefacts:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 70))])
        image[...] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
