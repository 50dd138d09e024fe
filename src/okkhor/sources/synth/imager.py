"""The imager: a grapheme string in one face -> a 137 x 236 page, by a list of steps (pose, distortion, pen, paper)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH
from okkhor.sources.synth import hand as handwriting
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.fonts import select_fonts
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.keys import GRAIN_SEED
from okkhor.sources.synth.shape import apply_shape
from okkhor.sources.synth.shape_style import ShapeStyle

if TYPE_CHECKING:  # shaping imports HarfBuzz and FreeType (the synth extra): only where a function needs it
    from okkhor.sources.synth.shaping import FontRenderer


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


@dataclass
class Sheet:
    """One image in the making, handed from step to step: its draws, the ink source, pose, coverage and page."""

    text: str
    rng: np.random.Generator
    renderer: FontRenderer
    hand: bool
    variation: Variation
    style: HandStyle
    u: np.ndarray  # every scalar choice of the image, drawn at once (u[0], u[1] are spare)
    out: np.ndarray | None = None  # the uint8 image, once the page is finished
    placed: list = field(default_factory=list)  # hand: the glyphs as (coverage, top, left), see FontRenderer.placed
    src: np.ndarray | None = None  # the ink coverage to pose (uint8, 255 = full ink)
    pen: float = 0.0  # hand: pen radius, tremor and bend amplitudes (0 for a font)
    tremor: float = 0.0
    bend: float = 0.0
    pose: dict = field(default_factory=dict)  # inv, centre, half sizes, scale and distortion amplitude
    roi: tuple[slice, slice] = (slice(0), slice(0))  # the box the ink can reach
    cov: np.ndarray | None = None  # float32 coverage over roi, 0..1
    work: np.ndarray | None = None  # float32 page grey levels
    gain: np.ndarray | None = None  # coverage -> grey change over roi


Step = Callable[[Sheet], None]


class Imager:
    """Turns a grapheme string into one 137 x 236 uint8 image in a given face: pose, distortion, pen and paper.

    `hand=True` draws it the way a hand differs from a font (see okkhor.sources.synth.hand): each glyph jittered, a
    stronger slant, a fine tremor on top of the smooth distortion, the strokes re-inked with a varying pen, and
    paper and scan artefacts. `shape` (okkhor.sources.synth.shape) also changes the letters' shapes in the hand style,
    just before the re-inking. An image is its style's list of steps (`font_steps`, `hand_steps`) run in order on
    one Sheet; a step that draws random numbers changes every later draw, so a new one goes where its draws
    should fall. Not thread-safe: it reuses its work buffers from image to image.
    """

    def __init__(self, fonts: Sequence[str | FontSpec], variation: Variation | None = None, em_px: int = 100,
                 hand: HandStyle | None = None, shape: ShapeStyle | None = None):
        from okkhor.sources.synth.shaping import FontRenderer  # the synth extra

        variation = Variation() if variation is None else variation
        if not isinstance(variation, Variation):
            raise TypeError(f"variation must be a Variation, got {type(variation).__name__}")
        hand = HandStyle() if hand is None else hand
        if not isinstance(hand, HandStyle):
            raise TypeError(f"hand must be a HandStyle, got {type(hand).__name__}")
        if shape is not None and not isinstance(shape, ShapeStyle):
            raise TypeError(f"shape must be a ShapeStyle or None, got {type(shape).__name__}")
        specs = [f if isinstance(f, FontSpec) else select_fonts([f])[0] for f in fonts]
        self.variation, self.hand = variation, hand
        self.shape = shape if shape is not None and shape.active else None
        self._shape_pad = math.ceil(self.shape.reach) if self.shape is not None else 0  # room for new ink
        self.renderers = [FontRenderer(s, em_px=em_px) for s in specs]
        self.height, self.width = h, w = IMAGE_HEIGHT, IMAGE_WIDTH
        self._x = np.arange(w, dtype=np.float32) - np.float32(w / 2)
        self._y = np.arange(h, dtype=np.float32) - np.float32(h / 2)
        self._kernels = {k: np.ones((k, k), np.uint8) for k in range(2, 8)}
        self._work = np.empty((h, w), np.float32)
        self._coarse_x = np.linspace(self._x[0], self._x[-1], 3)
        self._coarse_y = np.linspace(self._y[0], self._y[-1], 2)
        self._gain_left = handwriting.upsampler(2, h)
        self._gain_right = np.ascontiguousarray(handwriting.upsampler(3, w).T)
        # paper grain: one fixed Gaussian texture (the same in every process); each image reads a random window
        self._right = lru_cache(maxsize=64)(self._right_rows)   # per imager: a few cell counts recur
        self._grain = np.random.default_rng(GRAIN_SEED).standard_normal((2 * h + 64, 2 * w + 64)).astype(
            np.float32)
        self.font_steps: list[Step] = [self._font_source, self._pose, self._warp, self._stroke, self._blur,
                                       self._page, self._ink, self._grain_noise, self._finish]
        self.hand_steps: list[Step] = [self._place, self._headlines, self._jitter, self._pen_draws, self._pose,
                                       self._warp, self._reink, self._blur, self._page, self._paper_marks,
                                       self._ink, self._grain_noise, self._finish, self._scan_marks]
        if self.shape is not None:
            self.hand_steps.insert(self.hand_steps.index(self._reink), self._shape)

    def __call__(self, text: str, rng: np.random.Generator, face: int = 0, hand: bool = False,
                 out: np.ndarray | None = None) -> np.ndarray:
        sheet = Sheet(text, rng, self.renderers[face], hand, self.variation, self.hand, rng.random(20), out)
        for step in self.hand_steps if hand else self.font_steps:
            step(sheet)
        return sheet.out

    # ------------------------------------------------------------------------------------------- the ink source

    @staticmethod
    def _font_source(s: Sheet) -> None:
        s.src = s.renderer.render(s.text)

    @staticmethod
    def _place(s: Sheet) -> None:
        s.placed = s.renderer.placed(s.text)

    @staticmethod
    def _headlines(s: Sheet) -> None:
        if s.rng.random() < s.style.headline:
            s.placed = handwriting.split_headlines(s.placed)

    @staticmethod
    def _jitter(s: Sheet) -> None:
        s.src = handwriting.compose(s.placed, handwriting.glyph_jitter(s.placed, s.rng, s.style))

    @staticmethod
    def _pen_draws(s: Sheet) -> None:
        hs = s.style
        s.pen = hs.pen_px[0] + (hs.pen_px[1] - hs.pen_px[0]) * float(s.rng.random())
        s.tremor = hs.tremor_px * float(s.rng.random())
        s.bend = hs.bend_px * float(s.rng.random()) if hs.bend_px else 0.0  # nothing drawn when it is off

    # ------------------------------------------------------------------------------------------- pose and warp

    def _pose(self, s: Sheet) -> None:
        """Stretch, shear (slant), rotation; then the largest scale that fits, times a random fill."""
        v, hs, u = s.variation, s.style, s.u
        sh, sw = s.src.shape
        a = math.exp(v.aspect * (2 * u[2] - 1))
        shear = (hs.slant if s.hand else v.shear) * (2 * u[3] - 1)
        theta = math.radians(v.rotate_deg * (2 * u[4] - 1))
        c, sn = math.cos(theta), math.sin(theta)
        m00, m01, m10, m11 = c * a, (c * shear - sn) / a, sn * a, (sn * shear + c) / a  # rotate @ shear @ stretch
        half_w = (abs(m00) * sw + abs(m01) * sh) / 2
        half_h = (abs(m10) * sw + abs(m11) * sh) / 2
        amp = (hs.distort_px if s.hand else v.distort_px) * (0.3 + 0.7 * u[8])
        keep = s.pen + s.tremor + s.bend + (amp if s.hand else 0.0)  # the hand's extra reach stays inside the margin
        room_w, room_h = self.width / 2 - v.margin_px - keep, self.height / 2 - v.margin_px - keep
        scale = min(room_w / half_w, room_h / half_h) * (v.fill[0] + (v.fill[1] - v.fill[0]) * u[5])
        if s.hand:
            s.pen = max(min(s.pen, hs.pen_share * 2 * half_h * scale), 0.5)
        cx = (room_w - half_w * scale) * (2 * u[6] - 1)  # ink centre, relative to the frame centre
        cy = (room_h - half_h * scale) * (2 * u[7] - 1)
        det = (m00 * m11 - m01 * m10) * scale
        inv = (m11 / det, -m01 / det, -m10 / det, m00 / det)  # inverse of the scaled pose
        s.pose = dict(inv=inv, centre=(cx, cy), half=(half_w * scale, half_h * scale), amp=amp)

    def _warp(self, s: Sheet) -> None:
        """One remap: the inverse pose applied to the output grid displaced by a smooth random field; ink work
        happens only in the box the ink can reach (pose, distortion, pen and blur included)."""
        v, u, rng = s.variation, s.u, s.rng
        amp, (cx, cy), (half_w, half_h) = s.pose["amp"], s.pose["centre"], s.pose["half"]
        cells = (3 + int(u[9] * 3), 4 + int(u[10] * 4))
        reach = amp + s.tremor + s.bend + max(v.stroke_px[1], 0) + s.pen + 4
        y0, y1 = self.height / 2 + cy - half_h - reach, self.height / 2 + cy + half_h + reach
        x0, x1 = self.width / 2 + cx - half_w - reach, self.width / 2 + cx + half_w + reach
        s.roi = (slice(max(int(y0), 0), min(int(y1) + 1, self.height)),
                 slice(max(int(x0), 0), min(int(x1) + 1, self.width)))
        fields = rng.uniform(-amp, amp, size=(2, *cells)).astype(np.float32)
        if s.hand:  # multi-scale: the smooth field and (bend_px > 0) one of half its wavelength, bends within a
            # letter, both on a grid three times finer, plus a tremor on that grid
            fine = (3 * cells[0], 3 * cells[1])

            def on_fine(grid: np.ndarray) -> np.ndarray:
                return np.stack([cv2.resize(f, fine[::-1], interpolation=cv2.INTER_CUBIC) for f in grid])

            fields = on_fine(fields)
            if s.bend:
                fields += on_fine(rng.uniform(-s.bend, s.bend, size=(2, 2 * cells[0], 2 * cells[1])).astype(
                    np.float32))
            fields += rng.uniform(-s.tremor, s.tremor, size=fields.shape).astype(np.float32)
        sh, sw = s.src.shape
        mx, my = self._maps(fields, s.pose["inv"], (sw / 2 - 0.5, sh / 2 - 0.5), (cx, cy), s.roi)
        s.cov = cv2.remap(s.src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _right_rows(self, cells_x: int) -> np.ndarray:
        """[cells_x + 2, width]: bicubic upsampling rows, then x, then ones (see _maps)."""
        up = handwriting.upsampler(cells_x, self.width).T
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
        up_y = handwriting.upsampler(cells_y, self.height)[rows]
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

    # ------------------------------------------------------------------------------------------- pen

    def _stroke(self, s: Sheet) -> None:
        """A font is drawn thinner or thicker."""
        lo, hi = s.variation.stroke_px
        stroke = lo + min(int(s.u[11] * (hi - lo + 1)), hi - lo)
        if stroke > 0:
            s.cov = cv2.dilate(s.cov, self._kernels[stroke + 1])
        elif stroke < 0:
            s.cov = cv2.erode(s.cov, self._kernels[1 - stroke])

    def _shape(self, s: Sheet) -> None:
        """A hand draws the letter's shape its own way: strokes turned, trimmed, extended, loops opened, gaps
        bridged, a spline warp. Its draws come from a stream of their own (the image's jumped ahead), so every
        other draw of the image is what it would be without the shape steps; the pose is the same too (new ink
        past the margin is cut off rather than room kept for it). The steps work in the roi grown by their reach;
        when none of them changes anything, the roi and coverage stay as they were (the image without them)."""
        rows, cols, pad = *s.roi, self._shape_pad
        grown = (slice(max(rows.start - pad, 0), min(rows.stop + pad, self.height)),
                 slice(max(cols.start - pad, 0), min(cols.stop + pad, self.width)))
        y0, x0 = grown[0].start, grown[1].start
        cov = np.zeros((grown[0].stop - y0, grown[1].stop - x0), s.cov.dtype)
        cov[rows.start - y0:rows.stop - y0, cols.start - x0:cols.stop - x0] = s.cov
        keep = s.variation.margin_px + s.pen * (1 + s.style.pen_vary)  # new strokes' centres this far in: re-inked,
        # they stay inside the margin
        inside = (slice(max(math.ceil(keep) - y0, 0), max(math.floor(self.height - keep) - y0, 0)),
                  slice(max(math.ceil(keep) - x0, 0), max(math.floor(self.width - keep) - x0, 0)))
        shaped = apply_shape(cov, np.random.Generator(s.rng.bit_generator.jumped()), self.shape, s.pen, inside)
        if shaped is not cov:
            s.cov, s.roi = shaped, grown

    @staticmethod
    def _reink(s: Sheet) -> None:
        """A hand re-inks the strokes."""
        s.cov = handwriting.reink(s.cov, s.rng, s.style, s.pen)

    @staticmethod
    def _blur(s: Sheet) -> None:
        v = s.variation
        sigma = v.blur_sigma[0] + (v.blur_sigma[1] - v.blur_sigma[0]) * s.u[12]
        if sigma > 0.3:
            s.cov = cv2.GaussianBlur(s.cov, (3, 3) if sigma < 0.6 else (5, 5), sigma)

    # ------------------------------------------------------------------------------------------- ink on paper

    def _page(self, s: Sheet) -> None:
        """Page = paper + a gentle gradient; the coverage's grey change = pressure * (ink - page), smooth."""
        v, u = s.variation, s.u
        ink_lo, ink_hi = s.style.ink if s.hand else v.ink
        ink = ink_lo + (ink_hi - ink_lo) * u[13] ** 1.5
        paper = v.background[0] + (v.background[1] - v.background[0]) * u[14]
        gx = v.background_slope * (2 * u[15] - 1) / self.width
        gy = v.background_slope * (2 * u[16] - 1) / self.height
        page_left = np.stack([np.full(self.height, paper, np.float32), gy * self._y], axis=1)
        s.work = np.matmul(page_left, np.stack([1 + gx / paper * self._x, np.ones_like(self._x)]), out=self._work)
        coarse_page = paper + gy * self._coarse_y[:, None] + gx * self._coarse_x[None, :]
        fade = s.rng.uniform(1 - v.pressure, 1, size=coarse_page.shape)
        s.gain = np.matmul(self._gain_left[s.roi[0]] @ (fade * (ink - coarse_page) / 255).astype(np.float32),
                           self._gain_right[:, s.roi[1]])

    @staticmethod
    def _paper_marks(s: Sheet) -> None:
        handwriting.paper_marks(s.work, s.rng, s.style)

    @staticmethod
    def _ink(s: Sheet) -> None:
        s.work[s.roi] += s.cov * s.gain

    def _grain_noise(self, s: Sheet) -> None:
        v, u = s.variation, s.u
        noise = v.noise_sigma[0] + (v.noise_sigma[1] - v.noise_sigma[0]) * u[17]
        if noise > 0.5:
            oy = int(u[18] * (self._grain.shape[0] - self.height))
            ox = int(u[19] * (self._grain.shape[1] - self.width))
            cv2.scaleAdd(self._grain[oy:oy + self.height, ox:ox + self.width], noise, s.work, dst=s.work)

    def _finish(self, s: Sheet) -> None:
        if s.out is None:
            s.out = np.empty((self.height, self.width), np.uint8)
        cv2.convertScaleAbs(s.work, dst=s.out)  # rounds and saturates at 255 (values are >= 0 up to grain)

    @staticmethod
    def _scan_marks(s: Sheet) -> None:
        handwriting.scan_marks(s.out, s.rng, s.style)
