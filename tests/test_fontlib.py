"""The font library: fake npm and Debian clients, WOFF/WOFF2 conversion, sha256 pins, the cache, `okkhor fonts`."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from okkhor.cli import app
from okkhor.errors import OkkhorError
from okkhor.sources.synth import fontlib
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.fontlib import FontPackage, LibraryFont
from okkhor.sources.synth.fonts import discover_fonts, select_fonts
from okkhor.sources.synth.shaping import FontRenderer, check_shaping
from okkhor.sources.synth.writer import synthesize

runner = CliRunner()
KSSA, KI = "\u0995\u09cd\u09b7", "\u0995\u09bf"  # a conjunct (ক্ষ) and a pre-base vowel sign (কি)
NPM_MEMBER = "package/files/x-bengali-400-normal.woff2"
DEB_MEMBER = "usr/share/fonts/truetype/x/x.ttf"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")


def _shipped_font() -> Path:
    spec = importlib.util.find_spec("fontpkg_hind_siliguri")
    return Path(spec.submodule_search_locations[0]) / "files" / "HindSiliguri-Regular.ttf"


def _flavoured(path: Path, flavor: str | None, edit=None) -> bytes:
    from fontTools.ttLib import TTFont

    font = TTFont(path)
    if edit is not None:
        edit(font)
    font.flavor = flavor
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()


def _without_khanda_ta(font) -> None:
    """Like Likhan and Jamrul: no glyph for ৎ."""
    for table in font["cmap"].tables:
        table.cmap.pop(0x09CE, None)


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    """An npm tarball: package/package.json and `members`."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"package/package.json": b'{"name": "@test/x", "version": "1.0.0"}', **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _fake_npm(bin_dir: Path, log: Path, tgz: Path) -> None:
    """`npm pack --json --pack-destination DIR SPEC...` that copies `tgz` (of @test/x@1.0.0) and logs its call."""
    _script(bin_dir / "npm", f'echo "npm $*" >> {log}\ndest=.\nwhile [ $# -gt 0 ]; do\n'
                             f'  [ "$1" = --pack-destination ] && dest="$2"\n  shift\ndone\ncp {tgz} "$dest/"\n'
                             f'echo \'[{{"name": "@test/x", "version": "1.0.0", "filename": "{tgz.name}"}}]\'\n')


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The shipped font as WOFF and WOFF2, a fake npm tarball holding the WOFF2, and a fake .deb holding the TTF."""
    root = tmp_path_factory.mktemp("fontlib")
    ttf = _shipped_font()
    woff2 = _flavoured(ttf, "woff2")
    tgz = _tarball(root / "test-x-1.0.0.tgz", {NPM_MEMBER: woff2})
    deb = None
    if shutil.which("dpkg-deb"):
        tree = root / "deb"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text("Package: fonts-x\nVersion: 1.0-1\nArchitecture: all\n"
                                                 "Maintainer: okkhor tests <t@example.org>\nDescription: a test\n")
        (tree / DEB_MEMBER).parent.mkdir(parents=True)
        shutil.copy(ttf, tree / DEB_MEMBER)
        deb = root / "fonts-x_1.0-1_all.deb"
        subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                       capture_output=True)
    return dict(ttf=ttf, woff=_flavoured(ttf, "woff"), woff2=woff2, tgz=tgz, deb=deb, sha=fontlib.sha256_of(woff2),
                ttf_sha=fontlib.sha256_of(ttf))


def _catalogue(made, npm_sha: str | None = None) -> tuple[FontPackage, ...]:
    return (FontPackage("npm", "@test/x", "1.0.0", (LibraryFont(NPM_MEMBER, npm_sha or made["sha"], "Testfont Npm",
                                                                "Regular", "OFL-1.1"),)),
            FontPackage("deb", "fonts-x", "1.0-1", (LibraryFont(DEB_MEMBER, made["ttf_sha"], "Testfont Deb", "Bold",
                                                                "GPL-3.0-or-later WITH Font-exception-2.0"),)))


@pytest.fixture
def library(made, tmp_path, monkeypatch):
    """An empty cache in $OKKHOR_FONT_CACHE, the fake catalogue, and stand-ins for npm and apt-get first on PATH
    (each logs its arguments); dpkg-deb is the real one."""
    cache, bin_dir, log = tmp_path / "cache", tmp_path / "bin", tmp_path / "clients.log"
    bin_dir.mkdir()
    _fake_npm(bin_dir, log, made["tgz"])
    _script(bin_dir / "apt-get", f'echo "apt-get $*" >> {log}\ncp {made["deb"]} .\n')
    monkeypatch.setenv(fontlib.CACHE_ENV, str(cache))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fontlib, "CATALOGUE", _catalogue(made))
    discover_fonts.cache_clear()
    yield dict(cache=cache, bin=bin_dir, log=log)
    discover_fonts.cache_clear()


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# ----------------------------------------------------------------------------------------------- conversion

@pytest.mark.parametrize("flavor", ["woff", "woff2"])
def test_woff_and_woff2_become_ttf_that_shapes_a_conjunct_and_a_pre_base_sign_like_the_original(made, tmp_path,
                                                                                                  flavor):
    data = made[flavor]
    assert data[:4] == (b"wOFF" if flavor == "woff" else b"wOF2")
    ttf, suffix = fontlib.to_ttf(data, "Testfont", "Italic")
    assert suffix == ".ttf" and ttf[:4] == b"\x00\x01\x00\x00"
    (tmp_path / "x.ttf").write_bytes(ttf)
    converted = FontRenderer(FontSpec("testfont-italic", "testfont", tmp_path / "x.ttf"))
    original = FontRenderer(FontSpec("hind", "hind", made["ttf"]))
    check_shaping(converted)
    for text in (KSSA, KI):
        assert converted.shape(text) == original.shape(text)
    ka, virama, ssa, i_sign = (converted.nominal(c) for c in "\u0995\u09cd\u09b7\u09bf")
    assert [g for g, _, _ in converted.shape(KSSA)] not in ([ka, virama, ssa], [ka, ssa])  # one conjunct glyph
    assert converted.shape(KI)[0][0] == i_sign and converted.shape(KI)[0][1] < converted.shape(KI)[1][1]
    import freetype

    face = freetype.Face(str(tmp_path / "x.ttf"))  # the names okkhor's font and family names come from
    assert (face.family_name, face.style_name) == (b"Testfont", b"Italic")


def test_a_file_that_is_no_font_is_one_line():
    with pytest.raises(OkkhorError, match="not a readable font"):
        fontlib.to_ttf(b"wOFF" + b"\0" * 64)


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(fontlib.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fontlib.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(fontlib.CACHE_ENV)
    assert fontlib.cache_dir() == tmp_path / "xdg" / "okkhor" / "fonts"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fontlib.cache_dir() == tmp_path / "home" / ".cache" / "okkhor" / "fonts"


# ----------------------------------------------------------------------------------------------- fetching

@needs_dpkg
def test_fetch_checks_converts_and_caches_both_sources_and_synth_uses_them(library, made, tmp_path):
    cache = library["cache"]
    result = runner.invoke(app, ["fonts", "fetch"])
    assert result.exit_code == 0, result.output
    assert sorted(c.split()[0] for c in _calls(library["log"])) == ["apt-get", "npm"]
    assert "npm pack --json --pack-destination" in _calls(library["log"])[0] and "@test/x@1.0.0" in result.output
    files = fontlib.cached_font_files()
    assert [f.relative_to(cache).as_posix() for f in files] == [
        "test-x@1.0.0/x-bengali-400-normal.ttf", "fonts-x@1.0-1/x.ttf"]
    assert all(f.read_bytes()[:4] == b"\x00\x01\x00\x00" for f in files)
    manifest = json.loads((cache / "test-x@1.0.0" / "manifest.json").read_text())
    assert manifest["files"]["x-bengali-400-normal"]["source_sha256"] == made["sha"]
    assert manifest["files"]["x-bengali-400-normal"]["sha256"] == fontlib.sha256_of(files[0])

    discover_fonts.cache_clear()
    specs, _ = discover_fonts()
    library_specs = [s for s in specs if s.path in files]
    assert [(s.name, s.family) for s in library_specs] == [("testfont-npm-regular", "testfont-npm"),
                                                           ("testfont-deb-bold", "testfont-deb")]
    out = tmp_path / "synth"
    result = runner.invoke(app, ["synth", str(out), "--train", "4", "--test", "4", "--workers", "1", "--style",
                                 "font", "--fonts", "testfont-npm,testfont-deb,hind-siliguri",
                                 "--holdout-fonts", "testfont-npm"])
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(out / "test_labels.csv")
    assert set(labels["font"]) == {"testfont-npm"} and not labels["font_seen"].any()
    assert set(pd.read_csv(out / "train.csv")["font"]) <= {"testfont-deb", "hind-siliguri"}

    result = runner.invoke(app, ["fonts", "fetch"])  # cached: no client runs again
    assert result.exit_code == 0 and len(_calls(library["log"])) == 2 and "2 already cached" in result.output
    files[1].write_bytes(files[1].read_bytes()[:-8])  # a damaged cache file is fetched again
    assert "changed since it was fetched" in fontlib.cache_problem(fontlib.CATALOGUE[1])
    report = fontlib.fetch()
    assert report.fetched == ["fonts-x=1.0-1"] and report.present == ["@test/x@1.0.0"] and not report.problems
    assert fontlib.sha256_of(files[1]) == manifest_sha(cache / "fonts-x@1.0-1", "x")


def manifest_sha(folder: Path, stem: str) -> str:
    return json.loads((folder / "manifest.json").read_text())["files"][stem]["sha256"]


def test_a_bad_checksum_is_one_line_naming_the_file_and_nothing_is_cached(library, made, monkeypatch):
    monkeypatch.setattr(fontlib, "CATALOGUE", _catalogue(made, npm_sha="0" * 64)[:1])
    report = fontlib.fetch()
    assert len(report.problems) == 1 and NPM_MEMBER in report.problems[0]
    assert made["sha"] in report.problems[0] and "0" * 64 in report.problems[0]
    assert fontlib.cached_font_files() == [] and not list(library["cache"].rglob("*.ttf"))
    result = runner.invoke(app, ["fonts", "fetch"])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(warnings) == 1 and NPM_MEMBER in warnings[0] and "refused" in warnings[0]


def test_a_missing_client_is_one_line_and_synthesis_still_runs_on_the_pypi_fonts(library, made, monkeypatch,
                                                                                   tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = runner.invoke(app, ["fonts", "fetch"])
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(warnings) == 2 and "npm not found" in warnings[0] and "@test/x@1.0.0" in warnings[0]
    assert "apt-get" in warnings[1] and "fonts-x=1.0-1" in warnings[1]
    assert _calls(library["log"]) == []
    discover_fonts.cache_clear()
    summary = synthesize(tmp_path / "out", 4, 2, workers=1, progress=False, style="font")
    assert summary["fonts"] == [f.name for f in select_fonts()] and "hind-siliguri-regular" in summary["fonts"]
    assert not any(name.startswith("testfont") for name in summary["fonts"])
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), "--train", "2", "--test", "2", "--fonts",
                                 "testfont-npm"])
    assert_one_line_error(result.exit_code, result.output, "testfont-npm", "hind-siliguri")


@needs_dpkg
def test_an_unreachable_source_is_one_line_and_the_other_still_works(library):
    _script(library["bin"] / "npm", "echo 'npm error code ENOTFOUND' >&2\n"
                                    "echo 'npm error network request to https://registry.npmjs.org failed' >&2\n"
                                    "exit 1\n")
    report = fontlib.fetch()
    assert report.fetched == ["fonts-x=1.0-1"] and len(report.problems) == 1
    assert report.problems[0] == ("npm: could not fetch @test/x@1.0.0: npm error network request to "
                                  "https://registry.npmjs.org failed")
    assert [f.name for f in fontlib.cached_font_files()] == ["x.ttf"]


# ----------------------------------------------------------------------------------------------- the checks, the list

def test_library_fonts_get_the_coverage_and_shaping_checks_and_the_list_shows_them(library, made, monkeypatch,
                                                                                  tmp_path):
    no_khanda_ta = _flavoured(made["ttf"], "woff", _without_khanda_ta)
    no_shaping = _flavoured(made["ttf"], "woff", lambda font: font.__delitem__("GSUB"))
    packages = (FontPackage("npm", "@test/x", "1.0.0", (
                    LibraryFont(NPM_MEMBER, made["sha"], "Testfont Npm", "Regular", "OFL-1.1"),
                    LibraryFont("package/files/likhan.woff", fontlib.sha256_of(no_khanda_ta), "Likeish", "Regular",
                                "GPL-2.0-or-later"),
                    LibraryFont("package/files/flat.woff", fontlib.sha256_of(no_shaping), "Flat", "Regular",
                                "OFL-1.1"))),
                FontPackage("npm", "@test/absent", "2.0.0", (LibraryFont("package/files/a.woff2", "1" * 64,
                                                                         "Absent Font", "Regular", "OFL-1.1"),)))
    monkeypatch.setattr(fontlib, "CATALOGUE", packages)
    _fake_npm(library["bin"], library["log"], _tarball(tmp_path / "test-x-1.0.0.tgz", {
        NPM_MEMBER: made["woff2"], "package/files/likhan.woff": no_khanda_ta, "package/files/flat.woff": no_shaping}))
    report = fontlib.fetch(packages[:1])
    assert report.fetched == ["@test/x@1.0.0"] and not report.problems  # the checks come when the fonts are used
    result = runner.invoke(app, ["fonts", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()}
    assert rows["testfont-npm"].split()[1:5] == ["1", "npm", "@test/x@1.0.0", "OFL-1.1"]
    assert rows["testfont-npm"].endswith(str(library["cache"] / "test-x@1.0.0"))
    assert rows["likeish"].split()[1] == "0" and rows["likeish"].endswith("refused: no glyph for 1 code point(s) "
                                                                          "(U+09CE)")
    assert rows["flat"].split()[1] == "0" and "refused: Bengali shaping self-check failed" in rows["flat"]
    assert rows["absent-font"].endswith("not fetched: okkhor fonts fetch")
    assert rows["hind-siliguri"].split()[1:5] == ["5", "pypi", "fontpkg-hind-siliguri", "OFL-1.1"]
    pypi = {s.family for s in select_fonts() if s.path not in fontlib.cached_font_files()}
    assert result.output.splitlines()[-1].startswith(f"{len(pypi) + 1} families, {len(select_fonts())} faces usable")
    _, notes = discover_fonts()
    assert [n for n in notes if "likhan" in n] == ["dropped likhan.ttf: no glyph for 1 code point(s) (U+09CE)"]
