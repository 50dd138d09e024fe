"""Bengali text on pixels: HarfBuzz shaping, FreeType rasterising, and the shaping self-check of a face."""
from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import freetype
import numpy as np
import uharfbuzz as hb

from okkhor.bengali import VIRAMA
from okkhor.errors import OkkhorError
from okkhor.sources.synth.face import FontSpec

DOTTED_CIRCLE = "\u25cc"
SELF_CHECK_TEXTS = ("\u09b0\u09cd\u0995", "\u0995\u09cd\u09b0", "\u0995\u09cd\u09b7", "\u0995\u09bf")


@dataclass(frozen=True)
class Glyph:
    """A rasterised glyph: coverage bitmap (0..255) and its offset from the pen position (y grows downwards)."""

    bitmap: np.ndarray
    left: int
    top: int


class _LRU(OrderedDict):
    """A least-recently-stored cache bounded by entries and, for arrays, by bytes."""

    def __init__(self, entries: int, nbytes: int | None = None):
        super().__init__()
        self.entries, self.nbytes, self.used = entries, nbytes, 0

    def put(self, key, value):
        self[key] = value
        self.used += getattr(value, "nbytes", 0)
        while len(self) > self.entries or (self.nbytes is not None and self.used > self.nbytes and len(self) > 1):
            _, old = self.popitem(last=False)
            self.used -= getattr(old, "nbytes", 0)
        return value


class FontRenderer:
    """Shapes text with HarfBuzz and rasterises it with FreeType at one pixel size, caching glyphs and layouts.

    `shaping=False` lays out the nominal glyph of each code point in logical order instead of shaping; it is
    there to show what the self-check catches.
    """

    def __init__(self, spec: FontSpec, em_px: int = 64, shaping: bool = True, cache_mb: float = 8.0):
        if not isinstance(spec, FontSpec):
            raise TypeError(f"spec must be a FontSpec, got {type(spec).__name__}")
        if isinstance(em_px, bool) or not isinstance(em_px, int) or not 8 <= em_px <= 512:
            raise ValueError(f"em_px must be an integer in 8..512, got {em_px!r}")
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float)) or cache_mb < 0:
            raise ValueError(f"cache_mb must be a number >= 0, got {cache_mb!r}")
        self.spec = spec
        self.em_px = em_px
        self.shaping = bool(shaping)
        self._ft = freetype.Face(str(spec.path))
        if spec.weight is not None:
            self._ft.set_var_design_coords((spec.weight,))
        self._ft.set_pixel_sizes(0, em_px)
        self._load_flags = freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING
        self._hb = hb.Font(hb.Face(hb.Blob.from_file_path(str(spec.path))))
        self._hb.scale = (em_px * 64, em_px * 64)  # positions come out in 1/64 pixel
        if spec.weight is not None:
            self._hb.set_variations({"wght": spec.weight})
        self._glyphs: dict[int, Glyph] = {}
        self._layouts = _LRU(1 << 15)  # tuples of a few glyphs: small
        self._bitmaps = _LRU(1 << 15, int(cache_mb * (1 << 20)))

    @property
    def name(self) -> str:
        return self.spec.name

    def nominal(self, char: str) -> int:
        """The glyph id the font's cmap gives a code point (0 when missing)."""
        return self._ft.get_char_index(ord(char))

    def shape(self, text: str, dotted_circle: bool = False) -> tuple[tuple[int, int, int], ...]:
        """Glyphs in visual order as (glyph id, x, y) pen positions in 1/64 pixel, y upwards."""
        key = (text, dotted_circle)
        hit = self._layouts.get(key)
        if hit is not None:
            return hit
        out: list[tuple[int, int, int]] = []
        if self.shaping:
            buf = hb.Buffer()
            buf.add_str(text)
            buf.guess_segment_properties()
            if not dotted_circle:
                buf.flags = hb.BufferFlags.DO_NOT_INSERT_DOTTED_CIRCLE
            hb.shape(self._hb, buf)
            x = y = 0
            for info, pos in zip(buf.glyph_infos, buf.glyph_positions, strict=False):
                out.append((info.codepoint, x + pos.x_offset, y + pos.y_offset))
                x += pos.x_advance
                y += pos.y_advance
        else:
            x = 0
            for char in text:
                gid = self.nominal(char)
                out.append((gid, x, 0))
                x += self._hb.get_glyph_h_advance(gid)
        return self._layouts.put(key, tuple(out))

    def glyph(self, gid: int) -> Glyph:
        """The rasterised glyph `gid` (cached for the renderer's lifetime: a font has a few hundred glyphs)."""
        g = self._glyphs.get(gid)
        if g is None:
            self._ft.load_glyph(gid, self._load_flags)
            slot = self._ft.glyph
            bm = slot.bitmap
            rows, width, pitch = bm.rows, bm.width, bm.pitch
            if rows and width:
                raw = ctypes.string_at(bm._FT_Bitmap.buffer, rows * abs(pitch))
                bitmap = np.frombuffer(raw, np.uint8).reshape(rows, abs(pitch))[:, :width].copy()
            else:
                bitmap = np.zeros((0, 0), np.uint8)
            g = self._glyphs[gid] = Glyph(bitmap, slot.bitmap_left, slot.bitmap_top)
        return g

    def placed(self, text: str) -> list[tuple[np.ndarray, int, int]]:
        """The shaped text's inked glyphs in visual order as (bitmap, top, left), in pixels with y downwards."""
        placed = []
        for gid, x, y in self.shape(text):
            g = self.glyph(gid)
            if g.bitmap.size:
                placed.append((g.bitmap, -int(round(y / 64)) - g.top, int(round(x / 64)) + g.left))
        return placed

    def render(self, text: str) -> np.ndarray:
        """Ink coverage (uint8, 255 = full ink) of the shaped text, cropped to its ink. Cached; do not modify."""
        hit = self._bitmaps.get(text)
        if hit is not None:
            return hit
        placed = self.placed(text)
        if not placed:
            out = np.zeros((1, 1), np.uint8)
        else:
            y0 = min(t for _, t, _ in placed)
            x0 = min(left for _, _, left in placed)
            y1 = max(t + b.shape[0] for b, t, _ in placed)
            x1 = max(left + b.shape[1] for b, _, left in placed)
            out = np.zeros((y1 - y0, x1 - x0), np.uint8)
            for b, t, left in placed:
                view = out[t - y0:t - y0 + b.shape[0], left - x0:left - x0 + b.shape[1]]
                np.maximum(view, b, out=view)
            rows = np.flatnonzero(out.any(axis=1))
            cols = np.flatnonzero(out.any(axis=0))
            out = out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] if rows.size else np.zeros((1, 1), np.uint8)
        out.setflags(write=False)
        return self._bitmaps.put(text, out)

    def shows_hasanta(self, text: str) -> bool:
        """Whether the shaped text keeps the font's plain hasanta glyph: a conjunct the font cannot form."""
        virama = self.nominal(VIRAMA)
        return any(g == virama for g, _, _ in self.shape(text))

    def is_broken_cluster(self, text: str) -> bool:
        """Whether HarfBuzz sees `text` as an invalid syllable (it would insert a dotted circle)."""
        circle = self.nominal(DOTTED_CIRCLE)
        return bool(circle) and DOTTED_CIRCLE not in text and any(g == circle for g, _, _ in
                                                                  self.shape(text, dotted_circle=True))


def check_shaping(renderer: FontRenderer) -> None:
    """Fail with an OkkhorError unless the font shapes a reph, a ra-phala, ক্ষ and a pre-base i-sign correctly."""
    ra, ka, ssa = renderer.nominal("\u09b0"), renderer.nominal("\u0995"), renderer.nominal("\u09b7")
    virama = renderer.nominal(VIRAMA)
    reph, ra_phala, kssa, ki = (renderer.shape(t) for t in SELF_CHECK_TEXTS)
    problems = []
    if virama in {g for g, _, _ in reph} or reph[0][0] == ra:
        problems.append("র্ক shows র + hasanta instead of a reph over ক")
    if virama in {g for g, _, _ in ra_phala} or ra in {g for g, _, _ in ra_phala}:
        problems.append("ক্র shows ক + hasanta + র instead of a ra-phala")
    if virama in {g for g, _, _ in kssa} or [g for g, _, _ in kssa] == [ka, ssa]:
        problems.append("ক্ষ is not a conjunct")
    ka_x = [x for g, x, _ in ki if g == ka]
    if ki[0][0] == ka or (ka_x and ki[0][1] >= ka_x[0]):
        problems.append("ি is drawn after ক instead of before it")
    if problems:
        how = "" if renderer.shaping else " (shaping is disabled)"
        raise OkkhorError(f"font {renderer.name}: Bengali shaping self-check failed{how}: {'; '.join(problems)}")


def fit_into(coverage: np.ndarray, height: int, width: int, margin: float = 0.08) -> np.ndarray:
    """Scale an ink coverage bitmap to fit, centred, into height x width; returns float32 coverage 0..1."""
    import cv2

    h, w = coverage.shape
    scale = min(height * (1 - 2 * margin) / h, width * (1 - 2 * margin) / w)
    m = np.array([[scale, 0, (width - scale * w) / 2], [0, scale, (height - scale * h) / 2]], np.float64)
    return cv2.warpAffine(coverage.astype(np.float32) / 255.0, m, (width, height), flags=cv2.INTER_AREA
                          if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def check_face(spec: FontSpec) -> None:
    """The shaping self-check of one face at the default size (OkkhorError `font NAME: ...` when it fails)."""
    check_shaping(FontRenderer(spec))


def self_check_fonts(specs: Iterable[FontSpec], shaping: bool = True) -> list[FontRenderer]:
    """Renderers for `specs`, each passed through the shaping self-check (OkkhorError on the first failure)."""
    renderers = [FontRenderer(spec, shaping=shaping) for spec in specs]
    for r in renderers:
        check_shaping(r)
    return renderers
