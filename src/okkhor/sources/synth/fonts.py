"""Bengali fonts: the faces shipped by font packages, a user's font folder, coverage checks and selection by name."""
from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from okkhor.bengali import inventory
from okkhor.errors import OkkhorError

VARIABLE_INSTANCES = 3  # weights taken evenly over a variable font's wght axis, its ends included
DEFAULT_FONT = "hind-siliguri-regular"  # the fixed font of clean renderings (render_grapheme, the syllable check)


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
    import freetype  # the synth extra

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
    """All installed fonts that cover the whole Bengali inventory, and notes on the fonts dropped."""
    needed = sorted(inventory())
    kept: list[FontSpec] = []
    notes: list[str] = []
    names: set[str] = set()
    for path in _package_font_files():
        specs, problem = _file_specs(path, needed)
        if problem:
            notes.append(f"dropped {path.name}: {problem}")
        for spec in specs:
            if spec.name not in names:
                names.add(spec.name)
                kept.append(spec)
    return tuple(kept), tuple(notes)


def load_font_dir(folder: str | Path, taken: Iterable[str] = (), *, check: Callable[[FontSpec], None]
                  ) -> tuple[list[FontSpec], list[str]]:
    """A user's own .ttf/.otf files in `folder` (not recursive): the usable faces, and one warning per rejected file.

    A file is rejected when it cannot be opened, lacks a glyph the class map needs, or fails `check`, the shaping
    self-check (okkhor.sources.synth.shaping.check_face: an OkkhorError `font NAME: why`). A face whose name is
    in `taken` (e.g. a copy of a shipped font) gets the file name appended. OkkhorError when the folder is
    missing or no file in it is usable.
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
        specs, problem = _file_specs(path, needed)
        try:
            for spec in specs:
                check(spec)
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


def default_font() -> str:
    """The name of the font clean renderings use: DEFAULT_FONT when it is installed, else the first usable one."""
    names = [f.name for f in select_fonts()]
    return DEFAULT_FONT if DEFAULT_FONT in names else names[0]
