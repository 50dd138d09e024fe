"""Offline install: the wheelhouse has no torch, okkhor installs from it beside only torch, and the synth extra
(fonts, HarfBuzz, FreeType) is optional: without it okkhor imports, and `okkhor synth` says how to get it."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from okkhor.presets import presets

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / "wheelhouse"
sys.path.insert(0, str(ROOT / "tools"))
import wheelhouse  # noqa: E402

SYNTH_MODULES = ("uharfbuzz", "freetype")


def test_torch_is_a_range_and_fonts_are_the_synth_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {wheelhouse.Requirement(r).name: wheelhouse.Requirement(r) for r in project["dependencies"]}
    assert str(deps["torch"].specifier) == ">=2.5" and str(deps["torchvision"].specifier) == ">=0.20"
    synth = {wheelhouse.Requirement(r).name for r in project["optional-dependencies"]["synth"]}
    assert synth == {"uharfbuzz", "freetype-py", "fontpkg-hind-siliguri", "manimgx-fonts", "bengali-captcha",
                     "fonttools", "brotli",   # fonttools + brotli: the font library's WOFF/WOFF2 -> TTF
                     "scikit-image"}   # the skeleton of the shape steps (synth --shape)
    assert not synth & set(deps)
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.14.1 torchvision==0.29.1" in makefile and ".[dev,export,synth,serve]" in makefile


def test_closure_stops_at_torch_and_its_cuda_libraries():
    pins = wheelhouse.closure(wheelhouse.project_requirements())
    assert {"timm", "pytorch-ignite", "pandas", "onnx", "uharfbuzz"} <= set(pins)
    assert not [n for n in pins if wheelhouse.is_torch_part(n)]
    assert all(wheelhouse.is_torch_part(n) for n in ("torch", "torchvision", "triton", "nvidia-cudnn-cu13",
                                                     "cuda-bindings"))
    assert "onnx" not in wheelhouse.closure(wheelhouse.project_requirements(extras=()))


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (not the imports inside functions or classes)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue   # for type checkers only
        for stmt in ast.walk(node) if isinstance(node, (ast.If, ast.Try, ast.With)) else [node]:
            if isinstance(stmt, ast.Import):
                found |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
                found |= {stmt.module} | {f"{stmt.module}.{a.name}" for a in stmt.names}
    return found


def test_nothing_imports_the_synth_extra_eagerly():
    """Only the shaping module imports uharfbuzz and freetype, and no okkhor module imports it (or a module
    that does) when it is itself imported: without the synth extra everything else imports."""
    src = ROOT / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in src.joinpath("okkhor").rglob("*.py")}
    graph = {name: {m for m in _module_level_imports(p) if m in modules or m.split(".")[0] in SYNTH_MODULES}
             for name, p in modules.items()}
    needs = {name for name, deps in graph.items() if any(d.split(".")[0] in SYNTH_MODULES for d in deps)}
    assert needs == {"okkhor.sources.synth.shaping"}
    while True:   # everything that imports, at import time, a module that needs the extra
        more = {name for name, deps in graph.items() if deps & needs} - needs
        if not more:
            break
        needs |= more
    assert needs == {"okkhor.sources.synth.shaping"}
    assert "okkhor.cli" in graph and "okkhor.sources.synth.writer" in graph


def test_synth_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    from okkhor.cli import app

    monkeypatch.setitem(sys.modules, "uharfbuzz", None)
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), "--train", "2", "--test", "1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["okkhor: error: okkhor synth needs the optional extra 'synth' (uharfbuzz not installed): "
                     "pip install okkhor[synth]"]
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(not any(WHEELHOUSE.glob("*.whl")),
                    reason="no wheelhouse/ (it needs the package index): `make wheelhouse` or `make test` builds it")
def test_wheelhouse_installs_offline_beside_only_torch(tmp_path):
    """okkhor's wheel from this source tree plus wheelhouse/ install with no index into a fresh venv whose only
    packages are this environment's torch and torchvision (linked, as a Kaggle image has them)."""
    names = [w.name.split("-")[0] for w in WHEELHOUSE.glob("*.whl")]
    assert not [n for n in names if wheelhouse.is_torch_part(n.replace("_", "-"))]
    own = wheelhouse.own_wheel(tmp_path / "own")
    result = wheelhouse.check(WHEELHOUSE, tmp_path / "venv", spec=str(own))
    assert "synth" in result["help"] and "predict" in result["help"]
    assert "pip install okkhor[synth]" in result["synth"]
    assert [line.split()[0] for line in result["configs"].splitlines()] == [p.name for p in presets()]
    venv_py = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv_py), "-c", "import okkhor, torch, timm; print(okkhor.__file__, torch.__file__, "
                            "timm.__file__)"], capture_output=True, text=True, check=True, cwd=tmp_path,
                           env=env).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv" / "lib"))          # okkhor: installed from the wheel
    assert where[1].startswith(str(tmp_path / "venv" / "torch-env"))    # torch: the one it had
    assert where[2].startswith(str(tmp_path / "venv" / "lib"))          # timm: from the wheelhouse
