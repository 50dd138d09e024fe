"""Shape steps of the hand style: strokes turned, trimmed, extended, loops opened and gaps bridged, and TPS warps."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from okkhor.sources.synth.shape_style import STEPS, ShapeStyle

# The steps work on a uint8 ink coverage image (255 = ink) at the output's scale, before the pen re-inks it
# (okkhor.sources.synth.hand.reink redraws the strokes from their centreline, so a step's seams do not show).
# Each step is a pure function of (coverage, rng, style, pen): the same input and random stream give the same
# output in any process. New ink never lies farther than the step's reach (ShapeStyle.reach) from the input
# ink's box: a caller that keeps that much room around the ink keeps every step's ink inside its frame.


# ----------------------------------------------------------------------------------------------- strokes

_NEIGHBOURS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], np.float32)  # N=1, then clockwise


@functools.lru_cache(maxsize=1)
def _crossings() -> np.ndarray:
    """[256]: crossing number (0 -> 1 steps around the 8 neighbours, clockwise from N) of each neighbour code."""
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    return ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(axis=1).astype(np.uint8)


@dataclass
class Strokes:
    """The skeleton of an ink image split at its junctions into strokes, and which stroke each pixel belongs to.
    The images lie in `box` (the ink's box and a pixel around it); points are in its coordinates."""

    box: tuple[slice, slice]
    ink: np.ndarray  # bool: coverage > 127
    radius: np.ndarray  # float32: each pixel's distance to the background (a skeleton pixel's: the stroke's half width)
    points: np.ndarray  # [n + 1, 2] (y, x) of each skeleton pixel by label (row 0 unused)
    nearest: np.ndarray  # int32 image: the label of each pixel's nearest skeleton pixel
    stroke: np.ndarray  # [n + 1]: each label's stroke (0: a junction)
    length: np.ndarray  # [strokes + 1]: pixels of each stroke
    ends: np.ndarray  # labels of the free ends (skeleton pixels with one neighbour)
    pivot: np.ndarray  # [strokes + 1, 2]: where each stroke meets its junctions (mean), or its centre if it meets none
    attached: np.ndarray  # bool [strokes + 1]: the stroke meets a junction


def ink_box(coverage: np.ndarray, grow: float = 0.0) -> tuple[slice, slice] | None:
    """The box of the pixels with any ink, grown by `grow` pixels each side within the image; None without ink."""
    rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
    if not rows.size:
        return None
    g = int(math.floor(grow))
    h, w = coverage.shape
    return slice(max(rows[0] - g, 0), min(rows[-1] + g + 1, h)), slice(max(cols[0] - g, 0), min(cols[-1] + g + 1, w))


def strokes(coverage: np.ndarray) -> Strokes | None:
    """Analyse a uint8 coverage image (None without ink over 127): Zhang's skeleton, its junctions (crossing number
    >= 3, with the skeleton pixels next to them) and the strokes between them, and each pixel's nearest skeleton
    pixel (a distance transform with labels)."""
    import cv2
    from skimage.morphology import skeletonize

    box = ink_box(coverage, 1.0)
    if box is None:
        return None
    ink = coverage[box] > 127
    if not ink.any():
        return None
    skel = skeletonize(ink)
    ys, xs = np.nonzero(skel)
    code = cv2.filter2D(skel.view(np.uint8), cv2.CV_32F, _NEIGHBOURS, borderType=cv2.BORDER_CONSTANT)[ys, xs]
    crossing = _crossings()[code.astype(np.uint8)]
    marks = np.zeros(skel.shape, np.uint8)
    marks[ys[crossing >= 3], xs[crossing >= 3]] = 1
    square = np.ones((3, 3), np.uint8)
    zone = cv2.dilate(marks, square)[ys, xs].astype(bool)  # the junctions and the skeleton pixels next to them
    marks[:] = 0
    marks[ys[zone], xs[zone]] = 1
    touch = cv2.dilate(marks, square)[ys, xs].astype(bool) & ~zone  # stroke pixels next to a junction's zone
    marks[:] = 0
    marks[ys[~zone], xs[~zone]] = 1
    n_strokes, stroke_img = cv2.connectedComponents(marks, connectivity=8)
    _, nearest = cv2.distanceTransformWithLabels(np.where(skel, 0, 255).astype(np.uint8), cv2.DIST_L2, 3,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    labels = nearest[ys, xs]
    points = np.zeros((labels.size + 1, 2), np.int64)
    points[labels, 0], points[labels, 1] = ys, xs
    stroke = np.zeros(labels.size + 1, np.int64)
    stroke[labels] = of = stroke_img[ys, xs]
    length = np.bincount(of, minlength=n_strokes)
    length[0] = 0
    ends = labels[(crossing == 1) & ~zone]
    n_touch = np.bincount(of[touch], minlength=n_strokes).astype(np.float64)
    n_all = np.maximum(length, 1).astype(np.float64)
    pivot = np.empty((n_strokes, 2))
    for axis, v in enumerate((ys, xs)):
        by_touch = np.bincount(of[touch], weights=v[touch], minlength=n_strokes) / np.maximum(n_touch, 1)
        pivot[:, axis] = np.where(n_touch > 0, by_touch, np.bincount(of, weights=v, minlength=n_strokes) / n_all)
    radius = cv2.distanceTransform(ink.view(np.uint8), cv2.DIST_L2, 3)
    return Strokes(box, ink, radius, points, nearest, stroke, length, ends, pivot, n_touch > 0)


def chain(s: Strokes, end: int) -> np.ndarray:
    """Labels of the stroke that `end` (a free end's label) ends, in order from that end along the stroke."""
    members = np.flatnonzero(s.stroke == s.stroke[end])
    w = s.nearest.shape[1] + 2  # a pixel's key y * w + x: a neighbour off the row's ends is no pixel's key
    at = dict(zip((s.points[members, 0] * w + s.points[members, 1]).tolist(), members.tolist(), strict=True))
    steps = (-w, 1, w, -1, 1 - w, w + 1, w - 1, -w - 1)
    key, order, seen = int(s.points[end, 0]) * w + int(s.points[end, 1]), [end], {end}
    while True:
        for step in steps:
            j = at.get(key + step)
            if j is not None and j not in seen:
                break
        else:
            return np.array(order)
        order.append(j)
        seen.add(j)
        key += step


def _within(out: np.ndarray, coverage: np.ndarray, reach: float) -> np.ndarray:
    """`out` with its ink farther than `reach` outside the ink box of `coverage` erased (in place), returned."""
    rows, cols = ink_box(coverage, reach)
    out[:rows.start], out[rows.stop:], out[:, :cols.start], out[:, cols.stop:] = 0, 0, 0, 0
    return out


def _long_ends(s: Strokes, style: ShapeStyle) -> np.ndarray:
    """The free ends of the strokes at least `min_stroke_px` long."""
    return s.ends[s.length[s.stroke[s.ends]] >= style.min_stroke_px]


def _free_end(coverage: np.ndarray, style: ShapeStyle, u: float) -> tuple[Strokes, np.ndarray] | None:
    """The strokes of `coverage` and the chain from one long stroke's free end (the `u`-th share of them) towards
    its joint; None when the image has no such end."""
    s = strokes(coverage)
    if s is None:
        return None
    ends = _long_ends(s, style)
    if not ends.size:
        return None
    return s, chain(s, int(ends[int(u * ends.size)]))


def _erase(coverage: np.ndarray, s: Strokes, dropped: np.ndarray) -> np.ndarray:
    """A copy of `coverage` without the pixels whose nearest skeleton pixel is `dropped` (bool by label)."""
    out = coverage.copy()
    out[s.box][dropped[s.nearest]] = 0
    return out


def _cap(out: np.ndarray, coverage: np.ndarray, s: Strokes, centre: np.ndarray, radius: float) -> None:
    """Give back, in place, the ink of `coverage` within `radius` of `centre` (box coordinates): a round end."""
    import cv2

    disk = np.zeros(s.ink.shape, np.uint8)
    cv2.circle(disk, (int(round(centre[1] * 16)), int(round(centre[0] * 16))), int(round(radius * 16)), 255, -1,
               cv2.LINE_AA, 4)
    view = out[s.box]
    np.maximum(view, np.minimum(disk, coverage[s.box]), out=view)


def _no_crumbs(out: np.ndarray, coverage: np.ndarray, style: ShapeStyle) -> np.ndarray:
    """`out` without the crumbs a step broke off the ink of `coverage` (in place), returned: pieces of ink under
    `min_stroke_px` ** 2 / 2 pixels that were part of a piece at least twice as big (a dot of its own stays)."""
    import cv2

    box = ink_box(out)
    if box is None:
        return out
    n, piece, stats, _ = cv2.connectedComponentsWithStats((out[box] > 127).view(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    small = area < style.min_stroke_px ** 2 / 2
    small[0] = False
    if not small.any():
        return out
    _, before, old_stats, _ = cv2.connectedComponentsWithStats((coverage[box] > 127).view(np.uint8), connectivity=8)
    was = np.zeros(n, np.int64)  # the largest piece of the input that each piece's pixels were part of
    at = small[piece] & (before > 0)
    np.maximum.at(was, piece[at], old_stats[before[at], cv2.CC_STAT_AREA])
    crumbs = small & (was >= 2 * area)
    if crumbs.any():
        out[box][crumbs[piece]] = 0
    return out


# ----------------------------------------------------------------------------------------------- the steps

def move_stroke(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Turn and stretch one stroke with a free end about where it meets the letter (a stroke on its own: about
    its centre, and shift it too); its ink moves at most `move_px`."""
    import cv2

    u = rng.uniform(-1.0, 1.0, size=5)
    s = strokes(coverage)
    if s is None:
        return coverage
    candidates = np.unique(s.stroke[_long_ends(s, style)])
    if not candidates.size:
        return coverage
    k = int(candidates[int((u[4] + 1) / 2 * candidates.size) % candidates.size])
    own = np.zeros(coverage.shape, bool)
    own[s.box] = s.stroke[s.nearest] == k
    own &= coverage > 0
    py, px = s.pivot[k] + (s.box[0].start, s.box[1].start)
    ys, xs = np.nonzero(own)
    far = float(np.sqrt(((ys - py) ** 2 + (xs - px) ** 2).max()))
    theta, log_s = math.radians(style.move_deg) * u[0], style.move_stretch * u[1]
    shift = np.zeros(2) if s.attached[k] else style.move_px * 0.5 * u[2:4]
    moved = far * abs(math.exp(log_s) * complex(math.cos(theta), math.sin(theta)) - 1) + float(np.hypot(*shift))
    if moved > style.move_px:  # nearly linear for small turns: scale everything down to the largest move
        f = style.move_px / moved
        theta, log_s, shift = theta * f, log_s * f, shift * f
    m = cv2.getRotationMatrix2D((float(px), float(py)), math.degrees(theta), math.exp(log_s))
    m[:, 2] += shift[::-1]
    h, w = coverage.shape
    warped = cv2.warpAffine(np.where(own, coverage, 0).astype(np.uint8), m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT)
    out = np.where(own, 0, coverage).astype(np.uint8)
    np.maximum(out, warped, out=out)
    return _no_crumbs(_within(out, coverage, style.move_px), coverage, style)


@functools.lru_cache(maxsize=16)
def _tps_basis(rows: int, cols: int, lattice: tuple[int, int] = (24, 32)) -> np.ndarray:
    """[ly, lx, rows * cols]: the thin-plate spline through control points at the cell centres of a rows x cols
    grid over the unit square, on a ly x lx lattice, as a linear map of the control values."""
    from scipy.interpolate import RBFInterpolator

    cy, cx = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    ly, lx = np.meshgrid(np.linspace(0, 1, lattice[0]), np.linspace(0, 1, lattice[1]), indexing="ij")
    rbf = RBFInterpolator(np.stack([cy.ravel(), cx.ravel()], axis=1), np.eye(rows * cols),
                          kernel="thin_plate_spline", degree=1)
    return rbf(np.stack([ly.ravel(), lx.ravel()], axis=1)).reshape(*lattice, rows * cols).astype(np.float32)


def tps_warp(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Warp the ink with a thin-plate spline: `warp_grid` control points over the ink's box, each moved by up to
    `warp_px` (the field clipped to that, so no ink moves farther)."""
    import cv2

    rows, cols = style.warp_grid
    d = rng.uniform(-style.warp_px, style.warp_px, size=(rows * cols, 2)).astype(np.float32)
    box = ink_box(coverage, math.ceil(style.warp_px))
    if box is None:
        return coverage
    (y0, y1), (x0, x1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
    field = cv2.resize(_tps_basis(rows, cols) @ d, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    np.clip(field, -style.warp_px, style.warp_px, out=field)  # [h, w, (dy, dx)]
    my = field[..., 0] + np.arange(y0, y1, dtype=np.float32)[:, None]
    mx = field[..., 1] + np.arange(x0, x1, dtype=np.float32)[None, :]
    out = np.zeros_like(coverage)
    out[box] = cv2.remap(coverage, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _no_crumbs(out, coverage, style)


def trim_end(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Drop the free end of one stroke: up to `trim_share` of the stroke and `trim_px`, from its end towards its
    joint (a dot or a short stroke's loss can make another letter: strokes under `min_stroke_px` stay whole)."""
    u = rng.random(2)
    picked = _free_end(coverage, style, u[0])
    if picked is None:
        return coverage
    s, line = picked
    dropped = np.zeros(s.stroke.size, bool)
    cut = (0.4 + 0.6 * u[1]) * min(style.trim_share * line.size, style.trim_px)
    cut = min(max(int(round(cut)), 2), line.size - 1)
    dropped[line[:cut]] = True
    out = _erase(coverage, s, dropped)
    _cap(out, coverage, s, s.points[line[cut]], float(s.radius[tuple(s.points[line[cut]])]))  # a round new end
    return _no_crumbs(out, coverage, style)


def extend_end(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Draw one stroke on past its free end, in about its direction there, by up to `extend_px`, as wide."""
    import cv2

    u = rng.random(3)
    picked = _free_end(coverage, style, u[0])
    if picked is None:
        return coverage
    s, line = picked
    back = line[:7]
    (ty, tx), (by, bx) = s.points[back[0]], s.points[back[-1]]
    angle = math.atan2(ty - by, tx - bx) + math.radians(style.extend_deg) * (2 * u[1] - 1)
    length = style.extend_px * (0.4 + 0.6 * u[2])
    width = max(int(round(2 * float(np.median(s.radius[s.points[back, 0], s.points[back, 1]])))), 1)
    ty, tx = ty + s.box[0].start, tx + s.box[1].start
    out = coverage.copy()
    to = (int(round((tx + length * math.cos(angle)) * 16)), int(round((ty + length * math.sin(angle)) * 16)))
    cv2.line(out, (int(tx) * 16, int(ty) * 16), to, 255, width, cv2.LINE_AA, shift=4)
    return _within(out, coverage, style.extend_px)


def open_loop(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Cut a gap into a stroke around one closed loop (a hole in the ink): a band across the stroke, `pen` +
    `gap_px` each side of one of its skeleton points, so the re-inked gap shows about `gap_px` each side."""
    import cv2

    u = rng.random(2)
    s = strokes(coverage)
    if s is None:
        return coverage
    n, paper = cv2.connectedComponents((~s.ink).view(np.uint8), connectivity=4)
    outside = np.unique(np.concatenate([paper[0], paper[-1], paper[:, 0], paper[:, -1]]))
    holes = np.setdiff1d(np.flatnonzero(np.bincount(paper.ravel(), minlength=n) >= 4), outside)
    holes = holes[holes > 0]  # label 0: the ink
    if not holes.size:
        return coverage
    ys, xs = s.points[1:, 0], s.points[1:, 1]
    hole = cv2.distanceTransform((paper != holes[int(u[0] * holes.size)]).view(np.uint8), cv2.DIST_L2, 3)
    inside = np.ones(n, np.uint8)
    inside[outside] = 0
    out = cv2.distanceTransform(inside[paper], cv2.DIST_L2, 3)
    near = s.radius[ys, xs] + 1.5
    rim = (s.length[s.stroke[1:]] >= style.min_stroke_px) & (s.stroke[1:] > 0) & (hole[ys, xs] <= near)
    if not rim.any():
        return coverage
    if (rim & (out[ys, xs] <= near)).any():  # cut where the stroke parts the loop from the paper outside
        rim &= out[ys, xs] <= near
    rim = np.flatnonzero(rim) + 1
    at = rim[int(u[1] * rim.size)]
    (cy, cx), reach = s.points[at], pen + style.gap_px
    r = float(s.radius[cy, cx])
    near = s.points[1:][(s.stroke[1:] == s.stroke[at]) & ((ys - cy) ** 2 + (xs - cx) ** 2 <= (reach + 2) ** 2)]
    along = np.linalg.eigh(np.cov((near - near.mean(axis=0)).T.astype(np.float64)))[1][:, 1]  # the stroke's way
    across, half = np.array([-along[1], along[0]]) * (r + 2), along * (reach + r)
    corners = [np.array([cy, cx]) + a * across + b * half for a, b in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
    band = np.zeros(s.ink.shape, np.uint8)  # a band across the stroke, `reach` + its half width each side
    cv2.fillConvexPoly(band, np.round(np.array(corners)[:, ::-1] * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    out = coverage.copy()
    out[s.box][band.view(bool)] = 0
    for side in (-1, 1):  # round ends, as a pen lifts: no corners for the re-inking's centreline to branch to
        _cap(out, coverage, s, np.array([cy, cx]) + side * half, r)
    return _no_crumbs(out, coverage, style)


def close_gap(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0) -> np.ndarray:
    """Join a free stroke end to the nearest other stroke when a gap of at most `bridge_px` parts them: a line as
    wide as the thinner of the two, from the end to that stroke's centre."""
    import cv2

    u = rng.random()
    s = strokes(coverage)
    if s is None:
        return coverage
    pts, rad = s.points[1:], s.radius[s.points[1:, 0], s.points[1:, 1]]
    pairs = []
    for e in _long_ends(s, style):
        other = np.flatnonzero((s.stroke[1:] != s.stroke[e]) & (s.stroke[1:] > 0))
        if not other.size:
            continue
        gap = np.hypot(*(pts[other] - s.points[e]).T) - rad[other] - rad[e - 1] + 1.0  # edges: half a pixel in
        j = int(np.argmin(gap))
        mid = (pts[other[j]] + s.points[e]) // 2
        if 1.0 <= gap[j] <= style.bridge_px and not s.ink[mid[0], mid[1]]:  # open paper between, not a way round
            pairs.append((int(e), int(other[j]) + 1))
    if not pairs:
        return coverage
    e, t = pairs[int(u * len(pairs))]
    width = max(int(round(2 * min(rad[e - 1], rad[t - 1]))), 1)
    (ey, ex), (ty, tx) = s.points[e] + (s.box[0].start, s.box[1].start), s.points[t] + (s.box[0].start,
                                                                                          s.box[1].start)
    out = coverage.copy()
    cv2.line(out, (int(ex), int(ey)), (int(tx), int(ty)), 255, width, cv2.LINE_AA)
    return _within(out, coverage, style.step_reach("close"))


# ----------------------------------------------------------------------------------------------- all together

Step = Callable[[np.ndarray, np.random.Generator, ShapeStyle, float], np.ndarray]
_STEP = {"trim": trim_end, "extend": extend_end, "open": open_loop, "close": close_gap, "move": move_stroke,
         "warp": tps_warp}
STEP_NAMES: tuple[tuple[str, Step], ...] = tuple((name, _STEP[name]) for name in STEPS)  # shape_style's order


def apply_shape(coverage: np.ndarray, rng: np.random.Generator, style: ShapeStyle, pen: float = 0.0,
                inside: tuple[slice, slice] | None = None) -> np.ndarray:
    """Each step in STEP_NAMES order with its chance (one uniform draw per step, drawn at once); the warp last.
    New ink outside the box `inside` (when given) is cut off: ink there can only fade."""
    u = rng.random(len(STEP_NAMES))
    out = coverage
    for (name, step), draw in zip(STEP_NAMES, u, strict=True):
        if draw < getattr(style, name):
            out = step(out, rng, style, pen)
    if inside is not None and out is not coverage:
        keep = np.minimum(out, coverage)
        keep[inside] = out[inside]
        out = keep
    return out
