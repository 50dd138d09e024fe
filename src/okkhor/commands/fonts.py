"""`okkhor fonts`: list the Bengali font families synthesis can use, and fetch the font library into its cache."""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer


class Action(str, Enum):
    list = "list"
    fetch = "fetch"


def _pypi_package(path: Path) -> tuple[str, str]:
    """The distribution that installed a font file, and the licence its metadata declares."""
    import importlib.metadata as metadata

    for entry in map(Path, sys.path):
        try:
            top = path.relative_to(entry).parts[0]
        except (ValueError, IndexError):
            continue
        for dist in metadata.packages_distributions().get(top, []):
            meta = metadata.metadata(dist)
            return dist, meta.get("License-Expression") or meta.get("License") or "see the package"
    return "?", "?"


def _rows(cache: Path) -> list[tuple[str, str, str, str, str, str]]:
    """(family, faces, source, package, licence, where): the PyPI families found, then the library's families."""
    from okkhor.sources.synth import fontlib
    from okkhor.sources.synth.face import slug
    from okkhor.sources.synth.fonts import discover_fonts

    specs, notes = discover_fonts()
    library = set(fontlib.cached_font_files(cache))
    pypi: dict[str, list] = {}
    for spec in specs:
        if spec.path not in library:
            pypi.setdefault(spec.family, []).append(spec)
    rows = [(family, str(len(group)), "pypi", *_pypi_package(group[0].path), str(group[0].path.parent))
            for family, group in pypi.items()]
    faces = {}
    for spec in specs:
        faces[spec.path] = faces.get(spec.path, 0) + 1
    for package in fontlib.CATALOGUE:
        found = fontlib.cached_files(package, cache)
        families: dict[str, list] = {}
        for font in package.fonts:
            families.setdefault(font.family, []).append(font)
        for family, fonts in families.items():
            paths = [found[f] for f in fonts if f in found]
            usable = sum(faces.get(p, 0) for p in paths)
            refused = [n.split(": ", 1)[-1] for p in paths for n in notes if n.startswith(f"dropped {p.name}: ")]
            where = (str(cache / package.folder) if usable else f"refused: {refused[0]}" if refused
                     else "not fetched: okkhor fonts fetch" if not paths else "refused")
            rows.append((slug(family), str(usable), package.source, package.spec, fonts[0].licence,
                         where))
    return rows


def _list() -> None:
    from okkhor.sources.synth import fontlib

    cache = fontlib.cache_dir()
    rows = _rows(cache)
    header = ("family", "faces", "source", "package", "licence", "where")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [f"{c:>{w}}" if i == 1 else f"{c:<{w}}" for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))]
        typer.echo("  ".join([*cells, row[-1]]))
    usable = [r for r in rows if r[1] != "0"]
    typer.echo(f"{len({r[0] for r in usable})} families, {sum(int(r[1]) for r in usable)} faces usable; "
               f"font library cache: {cache} (${fontlib.CACHE_ENV})")


def _fetch(force: bool) -> None:
    from okkhor.sources.synth import fontlib
    from okkhor.sources.synth.fonts import discover_fonts

    cache = fontlib.cache_dir()
    report = fontlib.fetch(cache=cache, echo=typer.echo, force=force)
    for line in report.problems:
        typer.echo(f"warning: {line}", err=True)
    library = fontlib.cached_font_files(cache)
    specs, notes = discover_fonts()
    for note in notes:
        if any(note.startswith(f"dropped {p.name}: ") for p in library):
            typer.echo(f"note: {note}", err=True)
    usable = [s for s in specs if s.path in set(library)]
    missing = len(fontlib.CATALOGUE) - len(report.present) - len(report.fetched)
    typer.echo(f"fonts: {len(report.fetched)} packages fetched, {len(report.present)} already cached, {missing} "
               f"not fetched; the library gives {len({s.family for s in usable})} families, {len(usable)} faces "
               f"-> {cache}")
    if report.problems:
        raise typer.Exit(1)


def command(
    action: Action = typer.Argument(..., help="list: the font families synthesis can use; fetch: fetch the font "
                                              "library's missing packages into the cache."),
    force: bool = typer.Option(False, "--force", help="fetch: fetch every package again, even a cached one."),
) -> None:
    """List the Bengali font families `okkhor synth` uses, or fetch the font library into a user cache.

    The library: Fontsource packages from npm (`npm pack`, OFL-1.1) and Debian font packages (`apt-get download`,
    `dpkg-deb -x`), each pinned by version and each font file by its sha256; WOFF/WOFF2 files are converted to
    TTF (fontTools). Nothing is installed system-wide. The cache is $OKKHOR_FONT_CACHE, else
    $XDG_CACHE_HOME/okkhor/fonts, else ~/.cache/okkhor/fonts. Every cached face that covers the class map and
    passes the shaping self-check is used by `okkhor synth`, beside the fonts of the PyPI packages; --fonts and
    --holdout-fonts take their family names (e.g. galada, mukti).

    A source whose client (npm, apt-get) is missing or cannot reach its registry is one warning line and the
    rest still goes on; a file whose sha256 is not the pinned one is refused with one line. Exit status 1 when
    something could not be fetched.

    Examples:
      okkhor fonts fetch
      okkhor fonts list
      OKKHOR_FONT_CACHE=/data/fonts okkhor fonts fetch
      okkhor synth data/heldout --train 20000 --test 2000 --holdout-fonts galada
    """
    from okkhor.utils.extras import require

    require("synth", f"okkhor fonts {action.value}")
    if action is Action.fetch:
        _fetch(force)
    else:
        _list()
