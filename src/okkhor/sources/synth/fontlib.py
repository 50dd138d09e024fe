"""The font library: Bengali fonts pinned in npm (Fontsource) and Debian packages, fetched into a cache as TTF."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from okkhor.errors import OkkhorError
from okkhor.utils.files import atomic_path, write_text_atomic

CACHE_ENV = "OKKHOR_FONT_CACHE"
CLIENT_TIMEOUT_S = 600
CLIENTS = {"npm": ("npm",), "deb": ("apt-get", "dpkg-deb")}  # source kind -> the programs its fetch runs
OFL = "OFL-1.1"
GPL3_FONT = "GPL-3.0-or-later WITH Font-exception-2.0"
WEIGHTS = {100: "Thin", 200: "ExtraLight", 300: "Light", 400: "Regular", 500: "Medium", 600: "SemiBold",
           700: "Bold", 800: "ExtraBold", 900: "Black"}


@dataclass(frozen=True)
class LibraryFont:
    """One face: a font file inside a package, pinned by its sha256 as shipped, and the names its TTF gets."""

    member: str       # the file's path inside the package (the npm tarball, or the .deb's data)
    sha256: str       # of the file as shipped
    family: str       # family name written into the TTF; its slug is the family okkhor uses ("Tiro Bangla")
    style: str        # style name written into the TTF ("Regular", "Bold Italic", "Condensed")
    licence: str
    axes: tuple[tuple[str, float], ...] = ()  # a static instance of a variable font: (axis tag, value) pairs

    @property
    def stem(self) -> str:
        return Path(self.member).stem + "".join(f"-{tag}{value:g}" for tag, value in self.axes)


@dataclass(frozen=True)
class FontPackage:
    """A package of a registry, at a pinned version, and the faces taken from it."""

    source: str       # "npm" or "deb"
    name: str
    version: str
    fonts: tuple[LibraryFont, ...]

    @property
    def spec(self) -> str:
        """What the registry's client is given: `name@version` (npm) or `name=version` (apt-get)."""
        return f"{self.name}{'@' if self.source == 'npm' else '='}{self.version}"

    @property
    def folder(self) -> str:
        """The package's folder in the cache."""
        return f"{self.name.lstrip('@').replace('/', '-')}@{self.version.replace(':', '_')}"


def _fontsource(name: str, version: str, family: str, shas: dict[str, str], variable: bool = False,
                axes: Sequence[tuple[str, tuple[tuple[str, float], ...]]] = ()) -> FontPackage:
    """A Fontsource package's Bengali subset in WOFF2; `shas` maps '400-normal' (or 'standard-normal' for a
    variable package, instanced at `axes`: (style, axis values) pairs) to the file's sha256."""
    slug = name.split("/")[-1]
    fonts = []
    for key, sha in shas.items():
        member = f"package/files/{slug}-bengali-{key}.woff2"
        if variable:
            fonts += [LibraryFont(member, sha, family, style, OFL, values) for style, values in axes]
        else:
            weight, italic = key.split("-")
            style = WEIGHTS[int(weight)] if italic == "normal" else f"{WEIGHTS[int(weight)]} Italic"
            fonts.append(LibraryFont(member, sha, family, style.replace("Regular Italic", "Italic"), OFL))
    return FontPackage("npm", name, version, tuple(fonts))


def _debian(name: str, version: str, folder: str, files: Sequence[tuple[str, str, str, str, str]]) -> FontPackage:
    """A Debian package's .ttf files under usr/share/fonts/truetype/`folder`: (file, sha256, family, style,
    licence) rows."""
    return FontPackage("deb", name, version, tuple(
        LibraryFont(f"usr/share/fonts/truetype/{folder}/{file}", sha, family, style, licence)
        for file, sha, family, style, licence in files))


CATALOGUE: tuple[FontPackage, ...] = (
    _fontsource("@fontsource/galada", "5.2.8", "Galada", {  # a brush script
        "400-normal": "22eba75917e5f44b760c429d60cb2e475f6345559c7c85cc65c08c43e214f000"}),
    _fontsource("@fontsource/atma", "5.3.0", "Atma", {  # a thin pen
        "300-normal": "880d21b8ef13cf70397b987cf1fb3b21c769d137c1025d89a590305b74cd9f36",
        "400-normal": "a306c2235b2aad45f254b6782b157930bdbb5fcdae4e92b91534583128a2bc07",
        "500-normal": "f02a5f812e6dda9fa083a4728e3f232a2d923ed5d107b644981c321c520e6b5d",
        "600-normal": "64a99523c1c34d7aeb51a0e7884d97b56e7399104ff195eb997a1fe4e6b163db",
        "700-normal": "5dbb68c0ba73b39ea3127561227e2217b3e39f37a732d824ba8929f4e00b3566"}),
    _fontsource("@fontsource/mina", "5.3.0", "Mina", {
        "400-normal": "edccad503fdf779f918b325e1c42b4606ca3694ada40ff5fe4298c7db173b034",
        "700-normal": "2a96c0a2aa01928ebd0b208fcf5c2e0b63390fe6ed922a800604983417c6af8a"}),
    _fontsource("@fontsource/tiro-bangla", "5.3.0", "Tiro Bangla", {
        "400-normal": "7132520bbce148c22e0850d1b01f0569c4d8c7b21c6d9e102c28f12e8d386403",
        "400-italic": "a30206da9ede08496b3fea0115806b5eed4333d44a65077c5b200736ee79182d"}),
    _fontsource("@fontsource/baloo-da-2", "5.3.0", "Baloo Da 2", {
        "400-normal": "2503826a6576bf641b8ad6716bf88ff3a67fcd721f22a3c25394b9077b471c08",
        "500-normal": "c48af7d1499e5c00bfc189d726472f99c4231eba7e667e35ec631a19a227497d",
        "600-normal": "a847594a708c21972dfb7477f4b4db7e0e40217931843b8b691fb8a257afe886",
        "700-normal": "b937d43c795fff2c63b45a08829dd459a29b9d23935e48bfe60958ee7b949c02",
        "800-normal": "98af9f0718d36a269fd6feee824a859c0400cde86e861d392bd5ef018ed798ef"}),
    _fontsource("@fontsource/anek-bangla", "5.0.18", "Anek Bangla", {  # the weights, at the normal width
        "100-normal": "0e248e2749ada27e7f3529cadd89c96cf57d1b8f17c3c6861062447d1f225012",
        "200-normal": "451d59fdf180789031faf80017cb84543de064ca13cb1a15fd30f7b5d7ae12af",
        "300-normal": "5a77582d1daaa8d7561dcdb116906680c06a47bd98873bfbaefaf2ea923ea805",
        "400-normal": "844ea4598b208abe345886e988f32fdd299425b65204ad4f14690f5e8e3ca8fe",
        "500-normal": "bea701e6075201d6886a666426c4f3aa3156ccf4fe37c540db6602d3cdf7e29b",
        "600-normal": "5dfa21871dae075c4fdd51277064519e293cff57d896106c0f6b852e203896b1",
        "700-normal": "ea41c4dbbcefc18aa7d68a094764b39a80b682141837abe65da0467ae0748ea6",
        "800-normal": "4090e9333f41e1e9d0b1cf8b0460adbe89588b5df7c46b37ae00ba7f6dee026b"}),
    _fontsource("@fontsource-variable/anek-bangla", "5.3.0", "Anek Bangla", {  # the widths: static packages lack them
        "standard-normal": "d9c969228e38bdf11f474b5281ce2f287c7ae9b60fa8204246e3ddbe37c67281"}, variable=True,
        axes=(("Condensed", (("wght", 400), ("wdth", 75))), ("Condensed Bold", (("wght", 700), ("wdth", 75))),
              ("Expanded", (("wght", 400), ("wdth", 125))), ("Expanded Bold", (("wght", 700), ("wdth", 125))))),
    _fontsource("@fontsource/noto-serif-bengali", "5.3.0", "Noto Serif Bengali", {
        "100-normal": "de251fbb01c690d404645b9dad01412e1825d676ae4c978ac2297fdc88d39488",
        "200-normal": "82aba72a1790bf61768124d00dff05ecba854774664bc3d4a646f4615ea935e0",
        "300-normal": "fb694d3c5509b9f9667d0a2f5f4798c82dcc6734ec1c02f8fbf8fee1502f3e7a",
        "400-normal": "b2526e720328996ce10e17f7db2eb2b6a305a68cb9fea6c719d1ade18404c2c5",
        "500-normal": "d0f1a7611e7ec04b8d15248b393c787583fc960242166d16c4e0909614d0b830",
        "600-normal": "c494ff3edf5fb25102e2add0bfdb491d873e2f2a4d944fce0b4798a6e3e6168a",
        "700-normal": "e68a0434a8980d06f9e7cc6cde1d872c3686e7dc82293dcad4866b583b144c23",
        "800-normal": "2e9db6335b6fa79da00407c8314ad8237802d387f2dd2bf42de788ab60e53cda",
        "900-normal": "275297f8a43fd868febca719ce0420d2c3dfa21625ae77ad2c0f2a4720d8d34f"}),
    _debian("fonts-beng-extra", "3.2.1-1", "fonts-beng-extra", (  # Likhan and Jamrul lack ৎ: the checks refuse them
        ("Ani.ttf", "c277067fa386b906072f01a4dd66b72a4bdd77ba21d0a40834f62ac5d4a3b0a5", "Ani", "Regular", GPL3_FONT),
        ("Mukti.ttf", "93aefdd06bab1bb01b0d3ccadc65f5ab3024892caf8357bcc643d5ff52314141", "Mukti", "Regular",
         GPL3_FONT),
        ("Muktibold.ttf", "ba3450f14c95cd6428c79a9bd6f215b34c3304884225f24fdebb00f4e1712eb5", "Mukti", "Bold",
         GPL3_FONT),
        ("LikhanNormal.ttf", "5a578e386f421b7076883d8a0b8a97cabaf07a0fbaa9b7ad2fd5b092959dabac", "Likhan", "Regular",
         "GPL-2.0-or-later"),
        ("JamrulNormal.ttf", "61ed7222615ec8c9de9e8ca76212f5a63407c6255917de845671e479f7377b40", "Jamrul", "Regular",
         "GPL-2.0-or-later"))),
    _debian("fonts-lohit-beng-bengali", "2.91.5-3", "lohit-bengali", (
        ("Lohit-Bengali.ttf", "403ab40ccdc302a38c85c9dfeb2bd5909d8d86e608b9c8417cd691154b68666f", "Lohit Bengali",
         "Regular", OFL),)),
)


def cache_dir() -> Path:
    """The cache folder: $OKKHOR_FONT_CACHE, else $XDG_CACHE_HOME/okkhor/fonts, else ~/.cache/okkhor/fonts."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "okkhor" / "fonts"


def sha256_of(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


# ----------------------------------------------------------------------------------------------- the cache

def _manifest(package: FontPackage, cache: Path) -> dict:
    """The cached files of a package: {member + stem: {"file": name, "source_sha256": ..., "sha256": ...}}."""
    path = cache / package.folder / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data["files"] if data.get("version") == package.version else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def cached_files(package: FontPackage, cache: Path | None = None) -> dict[LibraryFont, Path]:
    """The package's faces found in the cache, made from a file with the pinned sha256 (nothing is hashed here)."""
    cache = cache_dir() if cache is None else Path(cache)
    entries = _manifest(package, cache)
    out = {}
    for font in package.fonts:
        entry = entries.get(font.stem)
        if isinstance(entry, dict) and entry.get("source_sha256") == font.sha256:
            path = cache / package.folder / str(entry.get("file", ""))
            if path.is_file():
                out[font] = path
    return out


def cached_font_files(cache: Path | None = None) -> list[Path]:
    """Every cached face of the catalogue, in catalogue order (what `okkhor synth` adds to the PyPI fonts)."""
    return [path for package in CATALOGUE for path in cached_files(package, cache).values()]


def cache_problem(package: FontPackage, cache: Path | None = None) -> str | None:
    """Why the package must be fetched (again): a face missing from the cache or a cached TTF that changed."""
    cache = cache_dir() if cache is None else Path(cache)
    found = cached_files(package, cache)
    if len(found) < len(package.fonts):
        return f"{len(package.fonts) - len(found)} of {len(package.fonts)} faces not cached"
    entries = _manifest(package, cache)
    for font, path in found.items():
        if sha256_of(path) != entries[font.stem].get("sha256"):
            return f"{path}: changed since it was fetched"
    return None


# ----------------------------------------------------------------------------------------------- conversion

def to_ttf(data: bytes, family: str | None = None, style: str | None = None,
           axes: Sequence[tuple[str, float]] = ()) -> tuple[bytes, str]:
    """A font file (TTF/OTF, WOFF or WOFF2) as plain sfnt bytes and its suffix ('.ttf' or '.otf'), optionally
    instanced at `axes` and renamed to `family` / `style` (the names FreeType reports, hence okkhor's names)."""
    if importlib.util.find_spec("fontTools") is None:
        raise OkkhorError("converting fonts needs fonttools: pip install okkhor[synth]")
    if data[:4] == b"wOF2" and importlib.util.find_spec("brotli") is None:
        raise OkkhorError("WOFF2 fonts need brotli to be read: pip install okkhor[synth]")
    from fontTools.ttLib import TTFont

    try:
        font = TTFont(io.BytesIO(data))
        if axes:
            from fontTools.varLib import instancer

            font = instancer.instantiateVariableFont(font, dict(axes))
        font.flavor = None
        if family and style:
            _rename(font, family, style)
        out = io.BytesIO()
        font.save(out)
    except OkkhorError:
        raise
    except Exception as exc:  # fontTools raises many types for a damaged file
        raise OkkhorError(f"not a readable font ({type(exc).__name__}: {exc})") from None
    return out.getvalue(), ".otf" if font.sfntVersion == "OTTO" else ".ttf"


def _rename(font, family: str, style: str) -> None:
    """One family name and one style name for every face of a family: the typographic names (16, 17) go, since
    FreeType prefers them, and the shipped ones split a family by weight ('Atma Light', 'Atma Medium')."""
    table = font["name"]
    for name_id in (1, 2, 4, 6, 16, 17, 21, 22):
        table.removeNames(nameID=name_id)
    for name_id, text in ((1, family), (2, style), (4, f"{family} {style}"), (6, f"{family}-{style}".replace(" ", ""))):
        table.setName(text, name_id, 3, 1, 0x409)


# ----------------------------------------------------------------------------------------------- fetching

Runner = Callable[..., "subprocess.CompletedProcess"]


@dataclass
class FetchReport:
    """What a fetch did: packages already cached, packages fetched now, and one line per problem."""

    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _client_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip() and "unsandboxed" not in line]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _run(run: Runner, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    try:
        return run(args, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"no answer in {CLIENT_TIMEOUT_S} s")
    except OSError as exc:
        return subprocess.CompletedProcess(args, 127, "", str(exc))


def _npm_files(packages: Sequence[FontPackage], tmp: Path, run: Runner) -> dict[FontPackage, Callable]:
    """`npm pack` every package into `tmp` in one call: {package: member -> bytes}. OkkhorError on failure."""
    proc = _run(run, ["npm", "pack", "--json", "--pack-destination", str(tmp), *(p.spec for p in packages)], tmp)
    if proc.returncode:
        raise OkkhorError(_client_error(proc))
    try:
        packed = {(e["name"], e["version"]): tmp / e["filename"] for e in json.loads(proc.stdout)}
    except (ValueError, KeyError, TypeError):
        raise OkkhorError("npm pack did not print the JSON list of its tarballs") from None
    out = {}
    for p in packages:
        if (p.name, p.version) in packed:
            out[p] = lambda member, tgz=packed[(p.name, p.version)]: _tar_member(tgz, member)
    return out


def _tar_member(tgz: Path, member: str) -> bytes:
    with tarfile.open(tgz, "r:gz") as tar:
        try:
            handle = tar.extractfile(member)
        except KeyError:
            handle = None
        if handle is None:
            raise OkkhorError(f"{member}: not in {tgz.name}")
        return handle.read()


def _deb_files(packages: Sequence[FontPackage], tmp: Path, run: Runner) -> dict[FontPackage, Callable]:
    """`apt-get download` every package into `tmp` in one call, `dpkg-deb -x` each: {package: member -> bytes}."""
    proc = _run(run, ["apt-get", "download", *(p.spec for p in packages)], tmp)
    if proc.returncode:
        raise OkkhorError(_client_error(proc))
    out = {}
    for p in packages:
        debs = sorted(tmp.glob(f"{p.name}_*.deb"))
        if not debs:
            continue
        root = tmp / f"{p.name}.data"
        proc = _run(run, ["dpkg-deb", "-x", str(debs[0]), str(root)], tmp)
        if proc.returncode:
            raise OkkhorError(f"dpkg-deb -x {debs[0].name}: {_client_error(proc)}")
        out[p] = lambda member, root=root: _file_member(root, member)
    return out


def _file_member(root: Path, member: str) -> bytes:
    path = root / member
    if not path.is_file():
        raise OkkhorError(f"{member}: not in the package")
    return path.read_bytes()


def _store(package: FontPackage, read: Callable[[str], bytes], cache: Path) -> list[str]:
    """Check, convert and cache the package's faces; one line per face refused. The manifest is written last."""
    problems, entries = [], {}
    folder = cache / package.folder
    for font in package.fonts:
        try:
            data = read(font.member)
            got = sha256_of(data)
            if got != font.sha256:
                raise OkkhorError(f"{font.member}: sha256 {got} is not the pinned {font.sha256}; refused")
            ttf, suffix = to_ttf(data, font.family, font.style, font.axes)
        except OkkhorError as exc:
            problems.append(f"{package.spec}: {exc}")
            continue
        with atomic_path(folder / f"{font.stem}{suffix}") as tmp:
            tmp.write_bytes(ttf)
        entries[font.stem] = {"file": f"{font.stem}{suffix}", "source_sha256": font.sha256, "sha256": sha256_of(ttf)}
    write_text_atomic(folder / "manifest.json", json.dumps(
        {"package": package.name, "version": package.version, "source": package.source, "files": entries}, indent=1))
    return problems


def fetch(packages: Sequence[FontPackage] | None = None, cache: Path | None = None, run: Runner = subprocess.run,
          echo: Callable[[str], None] = lambda line: None, force: bool = False) -> FetchReport:
    """Fetch the packages not yet cached (all of the catalogue by default) with each source's own client, one
    call per source, into a temporary folder; verify each font file's sha256, convert it to TTF, cache it.

    A source whose client is missing or fails is one line in `problems` and the others still go on; so is a
    file whose sha256 is not the pinned one (it is not cached). `echo` gets a line per package cached.
    """
    cache = cache_dir() if cache is None else Path(cache)
    packages = CATALOGUE if packages is None else tuple(packages)
    report = FetchReport()
    wanted = []
    for p in packages:
        if not force and cache_problem(p, cache) is None:
            report.present.append(p.spec)
        else:
            wanted.append(p)
    for source, getter in (("npm", _npm_files), ("deb", _deb_files)):
        todo = [p for p in wanted if p.source == source]
        if not todo:
            continue
        names = ", ".join(p.spec for p in todo)
        absent = [c for c in CLIENTS[source] if shutil.which(c) is None]
        if absent:
            report.problems.append(f"{source}: {' and '.join(absent)} not found; skipped {names}")
            continue
        with tempfile.TemporaryDirectory(prefix="okkhor-fonts-") as tmp:
            try:
                readers = getter(todo, Path(tmp), run)
            except OkkhorError as exc:
                report.problems.append(f"{source}: could not fetch {names}: {exc}")
                continue
            for p in todo:
                if p not in readers:
                    report.problems.append(f"{p.spec}: the client fetched no such package")
                    continue
                lines = _store(p, readers[p], cache)
                report.problems += lines
                report.fetched.append(p.spec)
                echo(f"cached {p.spec}: {len(p.fonts) - len(lines)} of {len(p.fonts)} faces -> {cache / p.folder}")
    return report
