"""Bengali grapheme rendering: fonts from installed packages, HarfBuzz shaping, FreeType rasterisation."""
from __future__ import annotations

import ctypes
import functools
import re
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import freetype
import numpy as np
import uharfbuzz as hb

from okkhor.errors import OkkhorError
from okkhor.sources.synth import fontlib

ZWJ = "\u200d"
VIRAMA = "\u09cd"
DOTTED_CIRCLE = "\u25cc"
CONSONANT_DIACRITIC_RULE = {  # consonant label -> (prefix, suffix before the vowel, suffix after the vowel)
    0: ("", "", ""),
    1: ("", "", "\u0981"),
    2: ("\u09b0\u09cd", "", ""),
    3: ("\u09b0\u09cd", "\u09cd\u09af", ""),
    4: ("", "\u09cd\u09af", ""),
    5: ("", "\u09cd\u09b0", ""),
    6: ("", "\u09cd\u09b0\u09cd\u09af", ""),
}
VARIABLE_INSTANCES = 3  # weights taken evenly over a variable font's wght axis, its ends included
DEFAULT_FONT = "hind-siliguri-regular"  # the fixed font of render_grapheme
SELF_CHECK_TEXTS = ("\u09b0\u09cd\u0995", "\u0995\u09cd\u09b0", "\u0995\u09cd\u09b7", "\u0995\u09bf")


# ----------------------------------------------------------------------------------------------- labels -> text

@functools.lru_cache(maxsize=1)
def class_components() -> dict[str, tuple[str, ...]]:
    """The built-in class map as {component_type: (string of label 0, label 1, ...)}; '' for 'no diacritic'."""
    from okkhor.targets import Targets

    comps = Targets.from_class_map().components
    return {name: tuple("" if (name != "grapheme_root" and s == "0") else s for s in values)
            for name, values in comps.items()}


@functools.lru_cache(maxsize=1)
def known_graphemes() -> tuple[tuple[str, int, int, int], ...]:
    """The 1,295 train graphemes shipped as graphemes.csv: (grapheme, root, vowel, consonant) rows, file order."""
    import csv

    with resources.files("okkhor.resources").joinpath("graphemes.csv").open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return tuple((r["grapheme"], int(r["root"]), int(r["vowel"]), int(r["consonant"])) for r in reader)


@functools.lru_cache(maxsize=1)
def _known_strings_by_triple() -> dict[tuple[int, int, int], tuple[str, ...]]:
    out: dict[tuple[int, int, int], tuple[str, ...]] = {}
    for g, r, v, c in known_graphemes():
        out[(r, v, c)] = out.get((r, v, c), ()) + (g,)
    return out


def seen_triples() -> frozenset[tuple[int, int, int]]:
    """The 1,292 distinct (root, vowel, consonant) label triples of the train graphemes."""
    return frozenset(_known_strings_by_triple())


def _rule_string(root: int, vowel: int, consonant: int) -> str:
    comps = class_components()
    r = comps["grapheme_root"][root]
    v = comps["vowel_diacritic"][vowel]
    prefix, middle, suffix = CONSONANT_DIACRITIC_RULE[consonant]
    if root == 123 and vowel == 1 and consonant == 4:  # র + ZWJ + ্য + া: the ZWJ stops a reph from forming
        middle = ZWJ + middle
    return prefix + r + middle + v + suffix


def grapheme_string(root: int, vowel: int, consonant: int) -> str:
    """The grapheme string of a label triple by the composition rule (with its ZWJ exception).

    When the triple is among the train graphemes and none of its strings equals the rule's, the train string
    is returned. Strings are never Unicode-normalised (ড় ঢ় য় are precomposed code points).
    """
    comps = class_components()
    for name, value in (("grapheme_root", root), ("vowel_diacritic", vowel), ("consonant_diacritic", consonant)):
        n = len(comps[name])
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
            raise ValueError(f"grapheme_string: {name} must be an integer in 0..{n - 1}, got {value!r}")
    text = _rule_string(int(root), int(vowel), int(consonant))
    known = _known_strings_by_triple().get((int(root), int(vowel), int(consonant)), ())
    if known and text not in known:
        return known[0]
    return text


def bengali_inventory() -> frozenset[str]:
    """Every code point a grapheme of the class map needs, ZWJ included."""
    chars = {ZWJ}
    for values in class_components().values():
        for s in values:
            chars.update(s)
    return frozenset(chars)


# ----------------------------------------------------------------------------------------------- fonts

@dataclass(frozen=True)
class FontSpec:
    """One font face to render with: a file, plus a design weight when the file is a variable font."""

    name: str
    family: str
    path: Path
    weight: float | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _package_font_files() -> list[Path]:
    """Bengali .ttf/.otf files shipped by the font packages the project depends on, those that are installed.

    The packages are located, not imported (bengali_captcha would import PIL and its generators).
    """
    import importlib.util

    places = (("fontpkg_hind_siliguri", ("files",), "*.[ot]tf"),
              ("manimgx_fonts", (), "NotoSansBengali*.[ot]tf"),
              ("bengali_captcha", ("assets", "fonts"), "*.[ot]tf"))
    found: list[Path] = []
    for package, parts, pattern in places:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location).joinpath(*parts)
            if folder.is_dir():
                found.extend(sorted(folder.glob(pattern)))
    return found


def _specs_of_file(path: Path) -> list[FontSpec]:
    face = freetype.Face(str(path))
    family = _slug(face.family_name.decode("latin-1"))
    if face.has_multiple_masters:
        axes = {a.tag: a for a in face.get_variation_info().axes}
        wght = axes.get("wght")
        if wght is not None:
            weights = np.linspace(wght.minimum, wght.maximum, VARIABLE_INSTANCES) if wght.maximum > wght.minimum \
                else [wght.default]
            return [FontSpec(f"{family}-w{int(round(w))}", family, path, float(w)) for w in weights]
    style = _slug(face.style_name.decode("latin-1")) or "regular"
    return [FontSpec(f"{family}-{style}", family, path)]


def _coverage_problem(path: Path, needed: Sequence[str]) -> str | None:
    """Why the file cannot render every grapheme of the class map (None when it can)."""
    face = freetype.Face(str(path))
    missing = [c for c in needed if face.get_char_index(ord(c)) == 0]
    if missing:
        codes = " ".join(f"U+{ord(c):04X}" for c in missing[:8])
        return f"no glyph for {len(missing)} code point(s) ({codes})"
    return None


def _file_specs(path: Path, needed: Sequence[str]) -> tuple[list[FontSpec], str | None]:
    """The faces of one font file, or ([], why it is unusable)."""
    try:
        specs = _specs_of_file(path)
    except Exception as exc:  # FreeType raises its own error types for unreadable files
        return [], f"cannot be opened ({exc})"
    problem = _coverage_problem(path, needed)
    return ([], problem) if problem else (specs, None)


@functools.lru_cache(maxsize=1)
def discover_fonts() -> tuple[tuple[FontSpec, ...], tuple[str, ...]]:
    """All installed fonts that cover the whole Bengali inventory, and notes on the fonts dropped.

    Installed: the PyPI font packages, then the font library's cache (`okkhor fonts fetch`, fontlib.py).
    """
    needed = sorted(bengali_inventory())
    kept: list[FontSpec] = []
    notes: list[str] = []
    names: set[str] = set()
    library = fontlib.cached_font_files()  # font library hook: its files also get the --fonts-dir shaping check
    for path in [*_package_font_files(), *library]:
        specs, problem = _file_specs(path, needed)
        if specs and path in library:  # font library hook (see load_font_dir)
            try:
                for spec in specs:
                    check_shaping(FontRenderer(spec))
            except OkkhorError as exc:
                specs, problem = [], str(exc).split(": ", 1)[-1]
        if problem:
            notes.append(f"dropped {path.name}: {problem}")
        for spec in specs:
            if spec.name not in names:
                names.add(spec.name)
                kept.append(spec)
    return tuple(kept), tuple(notes)


def load_font_dir(folder: str | Path, taken: Iterable[str] = ()) -> tuple[list[FontSpec], list[str]]:
    """A user's own .ttf/.otf files in `folder` (not recursive): the usable faces, and one warning per rejected file.

    A file is rejected when it cannot be opened, lacks a glyph the class map needs, or fails the shaping
    self-check. A face whose name is in `taken` (e.g. a copy of a shipped font) gets the file name appended.
    OkkhorError when the folder is missing or no file in it is usable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OkkhorError(f"{folder}: fonts-dir is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".ttf", ".otf"))
    if not files:
        raise OkkhorError(f"{folder}: fonts-dir holds no .ttf or .otf file")
    needed = sorted(bengali_inventory())
    names, kept, warnings = set(taken), [], []
    for path in files:
        specs, problem = _file_specs(path, needed)
        try:
            for spec in specs:
                check_shaping(FontRenderer(spec))
        except OkkhorError as exc:
            specs, problem = [], str(exc).split(": ", 1)[-1]
        if problem:
            warnings.append(f"{path}: font rejected: {problem}")
        for spec in specs:
            if spec.name in names:
                spec = FontSpec(f"{spec.name}-{_slug(path.stem)}", spec.family, spec.path, spec.weight)
            names.add(spec.name)
            kept.append(spec)
    if not kept:
        raise OkkhorError(f"{folder}: no usable font in fonts-dir ({'; '.join(warnings)})")
    return kept, warnings


def select_fonts(names: Sequence[str] | str | None = None, extra: Sequence[FontSpec] = ()) -> list[FontSpec]:
    """The usable fonts plus `extra` ones, optionally restricted by font or family names (comma-separated string
    or list)."""
    fonts, notes = discover_fonts()
    fonts = (*fonts, *extra)
    if not fonts:
        extra_notes = f" ({'; '.join(notes)})" if notes else ""
        raise OkkhorError("no usable Bengali font found: install fontpkg-hind-siliguri, manimgx-fonts or "
                          f"bengali-captcha{extra_notes}")
    if names is None:
        return list(fonts)
    if isinstance(names, str):
        names = [n for n in (s.strip() for s in names.split(",")) if n]
    wanted = [n.strip().lower() for n in names]
    if not wanted:
        raise OkkhorError("fonts: no font name given")
    available = [f.name for f in fonts]
    families = sorted({f.family for f in fonts})
    unknown = [n for n in wanted if n not in available and n not in families]
    if unknown:
        raise OkkhorError(f"unknown font(s) {', '.join(unknown)}; available: {', '.join(available)} "
                          f"(or a family: {', '.join(families)})")
    return [f for f in fonts if f.name in wanted or f.family in wanted]


# ----------------------------------------------------------------------------------------------- rendering

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


@functools.lru_cache(maxsize=64)
def get_renderer(name: str = DEFAULT_FONT, em_px: int = 64) -> FontRenderer:
    """A cached, self-checked renderer for one usable font by name."""
    spec = select_fonts([name])[0]
    renderer = FontRenderer(spec, em_px=em_px)
    check_shaping(renderer)
    return renderer


def fit_into(coverage: np.ndarray, height: int, width: int, margin: float = 0.08) -> np.ndarray:
    """Scale an ink coverage bitmap to fit, centred, into height x width; returns float32 coverage 0..1."""
    import cv2

    h, w = coverage.shape
    scale = min(height * (1 - 2 * margin) / h, width * (1 - 2 * margin) / w)
    m = np.array([[scale, 0, (width - scale * w) / 2], [0, scale, (height - scale * h) / 2]], np.float64)
    return cv2.warpAffine(coverage.astype(np.float32) / 255.0, m, (width, height), flags=cv2.INTER_AREA
                          if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def render_grapheme(text: str, height: int = 137, width: int = 236, font: str | None = None) -> np.ndarray:
    """Render one grapheme string cleanly (fixed font, no distortion): uint8 [height, width], black ink on white."""
    if not isinstance(text, str) or not text:
        raise ValueError("render_grapheme: text must be a non-empty string")
    if isinstance(height, bool) or not isinstance(height, int) or height < 8:
        raise ValueError(f"render_grapheme: height must be an integer >= 8, got {height!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 8:
        raise ValueError(f"render_grapheme: width must be an integer >= 8, got {width!r}")
    if font is None:
        names = [f.name for f in select_fonts()]
        font = DEFAULT_FONT if DEFAULT_FONT in names else names[0]
    renderer = get_renderer(font, em_px=max(32, min(256, height)))
    ink = fit_into(renderer.render(text), height, width)
    return np.clip(255.0 - 255.0 * ink + 0.5, 0, 255).astype(np.uint8)


def self_check_fonts(specs: Iterable[FontSpec], shaping: bool = True) -> list[FontRenderer]:
    """Renderers for `specs`, each passed through the shaping self-check (OkkhorError on the first failure)."""
    renderers = [FontRenderer(spec, shaping=shaping) for spec in specs]
    for r in renderers:
        check_shaping(r)
    return renderers
