"""`make wheelhouse`: every wheel okkhor needs except torch, torchvision and their CUDA libraries, for an offline
install beside the torch a Kaggle image already has; `--check` installs it into a fresh venv and runs okkhor.

The wheels are the versions installed in this environment (the one the tests passed in), fetched with
`pip wheel --no-deps` from the configured index; okkhor's own wheel is built from the source tree.

  python tools/wheelhouse.py [--out wheelhouse] [--extras export,synth] [--check]
  python tools/wheelhouse.py --check-only --out wheelhouse
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TORCH = ("torch", "torchvision")            # what the kernel has; never in the wheelhouse
EXTRAS = ("export", "synth")                # okkhor's extras whose wheels go in (not dev)


def is_torch_part(name: str) -> bool:
    """torch, torchvision and their CUDA libraries (nvidia-*, cuda-*, triton)."""
    name = canonicalize_name(name)
    return name in TORCH or name.startswith(("nvidia-", "cuda-")) or name == "triton"


def project_requirements(root: Path = ROOT, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """okkhor's requirements (with the given extras) as pyproject.toml states them."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(reqs: list[Requirement], stop=is_torch_part) -> dict[str, str]:
    """{distribution name: installed version} for `reqs` and everything they need, as installed here; `stop`
    names distributions that are neither included nor followed."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo: list[tuple[Requirement, set[str]]] = [(r, set()) for r in reqs]   # (requirement, extras of its parent)
    while todo:
        req, parent_extras = todo.pop()
        name = canonicalize_name(req.name)
        if stop(name) or not _wanted(req, parent_extras) or (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"wheelhouse: {req} is not installed here; run `make setup` first") from None
        found[name] = dist.version
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return dict(sorted(found.items()))


def _pip(*args: str) -> None:
    """Run pip here; its output is shown only when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"wheelhouse: pip {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def own_wheel(out: Path, root: Path = ROOT) -> Path:
    """Build okkhor's wheel from a clean copy of the source tree (offline: no deps, no build isolation), so no
    stale build/ folder leaks into it and the tree gets none."""
    with tempfile.TemporaryDirectory(prefix="okkhor-src.") as tmp:
        src = Path(tmp) / "okkhor"
        shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, src / name)
        _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(src))
    (wheel,) = sorted(out.glob("okkhor-*.whl"))
    return wheel


def build(out: Path, extras: tuple[str, ...] = EXTRAS, root: Path = ROOT) -> list[Path]:
    """Fill `out` (replaced whole) with okkhor's wheel and the wheels of its requirements but torch's."""
    pins = closure(project_requirements(root, extras))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheelhouse.", dir=out.parent))
    try:
        req_file = tmp / "requirements.txt"
        req_file.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp), "-r", str(req_file))
        req_file.unlink()
        own_wheel(tmp, root)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wheels = sorted(out.glob("*.whl"))
    bad = [w.name for w in wheels if is_torch_part(w.name.split("-")[0])]
    if bad:
        raise SystemExit(f"wheelhouse: torch parts came in: {', '.join(bad)}")
    return wheels


def _dist_paths(name: str) -> set[Path]:
    """The top-level site-packages entries of an installed distribution (package dirs, modules, dist-info)."""
    dist = md.distribution(name)
    base = Path(dist.locate_file(""))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    return {base / t for t in tops if (base / t).exists()}


def torch_env(site: Path) -> list[str]:
    """Make `site` a folder of links to this environment's torch, torchvision and all they need (what a Kaggle
    image has); returns the distributions linked."""
    names = closure([Requirement(t) for t in TORCH], stop=lambda name: False)
    site.mkdir(parents=True, exist_ok=True)
    for name in names:
        for path in _dist_paths(name):
            link = site / path.name
            if not link.exists():
                link.symlink_to(path)
    return list(names)


def check(wheelhouse: Path, venv: Path, spec: str = "okkhor") -> dict[str, str]:
    """Make a fresh venv at `venv` that has only torch (linked from here), install `spec` (without extras) from
    `wheelhouse` with no index, and run okkhor there: `okkhor --help` must work, and `okkhor synth` must say in
    one line that it needs the synth extra, and `okkhor configs` must list the presets the wheel carries. Returns
    their outputs; raises RuntimeError on a failure."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    torch_env(venv / "torch-env")
    (site / "torch_env.pth").write_text(str(venv / "torch-env") + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=venv)

    pip = run(sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-index", "--no-compile",
              "--find-links", str(wheelhouse), spec)
    if pip.returncode:
        raise RuntimeError(f"offline install of {spec} from {wheelhouse} failed:\n{pip.stdout}{pip.stderr}")
    okkhor = str(venv / "bin" / "okkhor")
    helped = run(okkhor, "--help")
    if helped.returncode or "Usage" not in helped.stdout:
        raise RuntimeError(f"okkhor --help failed in {venv}:\n{helped.stdout}{helped.stderr}")
    configs = run(okkhor, "configs")
    if configs.returncode or "demo-cpu" not in configs.stdout:
        raise RuntimeError(f"okkhor configs lists no presets in {venv}:\n{configs.stdout}{configs.stderr}")
    synth = run(okkhor, "synth", str(venv / "synth"), "--train", "1", "--test", "1")
    if synth.returncode != 2 or "pip install okkhor[synth]" not in synth.stderr:
        raise RuntimeError(f"okkhor synth without the synth extra: rc {synth.returncode}\n{synth.stderr}")
    return {"help": helped.stdout, "configs": configs.stdout, "synth": synth.stderr.strip()}


def install_line(wheelhouse: str = "/kaggle/input/okkhor-wheelhouse") -> str:
    return f"pip install --no-index --find-links {wheelhouse} okkhor"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/wheelhouse.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    ap.add_argument("--extras", default=",".join(EXTRAS), help="okkhor extras to include (comma-separated)")
    ap.add_argument("--check", action="store_true", help="then install it offline into a fresh venv")
    ap.add_argument("--check-only", action="store_true", help="only the check, of an existing wheelhouse")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if not args.check_only:
        wheels = build(out, tuple(e for e in args.extras.split(",") if e))
        size = sum(w.stat().st_size for w in wheels)
        tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
        print(f"wheelhouse: {len(wheels)} wheels, {size / 2**20:.0f} MiB in {out} (for {tag} on {sys.platform}; "
              f"no torch, torchvision or CUDA libraries)")
    if args.check or args.check_only:
        with tempfile.TemporaryDirectory(prefix="okkhor-wheelhouse-check.") as tmp:
            result = check(out, Path(tmp) / "venv")
        print(f"wheelhouse: offline install into a fresh venv with only torch: okkhor --help works; without the "
              f"synth extra, okkhor synth says: {result['synth']}")
    print("wheelhouse: upload it as a Kaggle dataset; in the kernel:")
    print(install_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
