"""Bengali fonts by name: installed and user faces, their checks, selection, and clean renderings in a named font."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from okkhor.bengali import inventory
from okkhor.errors import OkkhorError
from okkhor.sources.synth import fontlib
from okkhor.sources.synth.face import FontSpec, slug

if TYPE_CHECKING:  # shaping imports HarfBuzz and FreeType (the synth extra): only where a function needs it
    from okkhor.sources.synth.shaping import FontRenderer

VARIABLE_INSTANCES = 3  # weights taken evenly over a variable font's wght axis, its ends included
DEFAULT_FONT = "hind-siliguri-regular"  # the fixed font of clean renderings (render_grapheme, the syllable check)


def _package_font_files() -> list[Path]:
    """Bengali .ttf/.otf files shipped by the font packages the project depends on, those that are installed.

    The packages are located, not imported (bengali_captcha would import PIL and its generators).
    """
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
    import freetype  # the synth extra

    face = freetype.Face(str(path))
    family = slug(face.family_name.decode("latin-1"))
    if face.has_multiple_masters:
        axes = {a.tag: a for a in face.get_variation_info().axes}
        wght = axes.get("wght")
        if wght is not None:
            weights = np.linspace(wght.minimum, wght.maximum, VARIABLE_INSTANCES) if wght.maximum > wght.minimum \
                else [wght.default]
            return [FontSpec(f"{family}-w{int(round(w))}", family, path, float(w)) for w in weights]
    style = slug(face.style_name.decode("latin-1")) or "regular"
    return [FontSpec(f"{family}-{style}", family, path)]


def _coverage_problem(path: Path, needed: Sequence[str]) -> str | None:
    """Why the file cannot render every grapheme of the class map (None when it can)."""
    import freetype  # the synth extra

    face = freetype.Face(str(path))
    missing = [c for c in needed if face.get_char_index(ord(c)) == 0]
    if missing:
        codes = " ".join(f"U+{ord(c):04X}" for c in missing[:8])
        return f"no glyph for {len(missing)} code point(s) ({codes})"
    return None


def _file_specs(path: Path, needed: Sequence[str], shaping: bool = False) -> tuple[list[FontSpec], str | None]:
    """The faces of one font file, or ([], why it is unusable); `shaping`: each face must also pass the shaping
    self-check (a file from outside the font packages)."""
    from okkhor.sources.synth.shaping import check_face  # the synth extra

    try:
        specs = _specs_of_file(path)
    except Exception as exc:  # FreeType raises its own error types for unreadable files
        return [], f"cannot be opened ({exc})"
    problem = _coverage_problem(path, needed)
    if problem:
        return [], problem
    try:
        for spec in specs if shaping else ():
            check_face(spec)
    except OkkhorError as exc:
        return [], str(exc).split(": ", 1)[-1]
    return specs, None


@functools.lru_cache(maxsize=1)
def discover_fonts() -> tuple[tuple[FontSpec, ...], tuple[str, ...]]:
    """All installed fonts that cover the whole Bengali inventory, and notes on the fonts dropped.

    Installed: the PyPI font packages, then the font library's cache (`okkhor fonts fetch`, fontlib.py).
    """
    needed = sorted(inventory())
    kept: list[FontSpec] = []
    notes: list[str] = []
    names: set[str] = set()
    library = fontlib.cached_font_files()  # font library hook: its files also get the --fonts-dir shaping check
    for path in [*_package_font_files(), *library]:
        specs, problem = _file_specs(path, needed, shaping=path in library)
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
    needed = sorted(inventory())
    names, kept, warnings = set(taken), [], []
    for path in files:
        specs, problem = _file_specs(path, needed, shaping=True)
        if problem:
            warnings.append(f"{path}: font rejected: {problem}")
        for spec in specs:
            if spec.name in names:
                spec = FontSpec(f"{spec.name}-{slug(path.stem)}", spec.family, spec.path, spec.weight)
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


def default_font() -> str:
    """The name of the font clean renderings use: DEFAULT_FONT when it is installed, else the first usable one."""
    names = [f.name for f in select_fonts()]
    return DEFAULT_FONT if DEFAULT_FONT in names else names[0]


@functools.lru_cache(maxsize=64)
def get_renderer(name: str | None = None, em_px: int = 64) -> FontRenderer:
    """A cached, self-checked renderer for one usable font by name (None: the default font)."""
    from okkhor.sources.synth.shaping import FontRenderer, check_shaping  # the synth extra

    renderer = FontRenderer(select_fonts([default_font() if name is None else name])[0], em_px=em_px)
    check_shaping(renderer)
    return renderer


def render_grapheme(text: str, height: int = 137, width: int = 236, font: str | None = None) -> np.ndarray:
    """Render one grapheme string cleanly (fixed font, no distortion): uint8 [height, width], black ink on white."""
    from okkhor.sources.synth.shaping import fit_into  # the synth extra

    if not isinstance(text, str) or not text:
        raise ValueError("render_grapheme: text must be a non-empty string")
    if isinstance(height, bool) or not isinstance(height, int) or height < 8:
        raise ValueError(f"render_grapheme: height must be an integer >= 8, got {height!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 8:
        raise ValueError(f"render_grapheme: width must be an integer >= 8, got {width!r}")
    renderer = get_renderer(font, em_px=max(32, min(256, height)))
    ink = fit_into(renderer.render(text), height, width)
    return np.clip(255.0 - 255.0 * ink + 0.5, 0, 255).astype(np.uint8)
