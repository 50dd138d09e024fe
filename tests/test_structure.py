"""The package's shape: no import cycles, no private names across modules, library private names confined to
their adapters, option names from one registry, and a config check that loads no heavy library."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from okkhor.cli import app

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in SRC.joinpath("okkhor").rglob("*.py")}


def _imports(path: Path):
    """(module, name or None, line) of every `okkhor` import anywhere in the file, inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "okkhor")
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "okkhor":
            yield from ((node.module, a.name, node.lineno) for a in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the okkhor modules it imports (at any depth of the file); a package's own parents are left out,
    since importing a submodule always runs them."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, imported, _ in _imports(path):
            full = f"{module}.{imported}" if imported else module
            dep = full if full in modules else owner(module)
            if dep and dep != name and not name.startswith(dep + "."):
                deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_okkhor():
    graph = import_graph()
    assert "okkhor.training.train" in graph and "okkhor.config" in graph
    assert cycles(graph) == []


def test_no_private_names_imported_across_modules():
    modules = _modules()
    private = [f"{path.relative_to(SRC)}:{line}: from {module} import {name}"
               for path in modules.values() for module, name, line in _imports(path)
               if name and name.startswith("_") and f"{module}.{name}" not in modules]
    assert private == []


def test_private_library_names_only_in_their_adapters():
    """timm's private tables are reached from one adapter; it fails here when timm moves them."""
    from okkhor.models.timm_adapter import activation_names, efficientnet_se_type

    assert {"mish", "relu", "silu", "gelu"} <= set(activation_names())
    assert efficientnet_se_type() is not None and efficientnet_se_type().__name__ == "SqueezeExcite"
    adapters = {"okkhor/models/timm_adapter.py"}
    offenders = []
    for path in SRC.joinpath("okkhor").rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("timm") and rel not in adapters:
                names = [a.name for a in node.names]
                if any(part.startswith("_") for part in node.module.split(".")) or any(n.startswith("_")
                                                                                       for n in names):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_option_names_have_one_owner():
    """The builders cover exactly the names okkhor.options registers, and help texts list them all."""
    from okkhor.data.augment import PRESET_BUILDERS
    from okkhor.options import AUG_PRESETS, MIX_KINDS, OPTIMIZERS, SCHEDULES
    from okkhor.training.optim import SCHEDULE_SPECS

    assert set(PRESET_BUILDERS) == set(AUG_PRESETS)
    assert set(SCHEDULE_SPECS) == set(SCHEDULES)
    assert {"adamw", "sgd", "lamb"} <= set(OPTIMIZERS)
    out = CliRunner().invoke(app, ["preview", "--help"], env={"COLUMNS": "200"}).output
    assert all(kind in out for kind in MIX_KINDS), out
    assert "fmix" in out


def test_config_check_loads_no_heavy_library():
    """`okkhor train --print-config` checks every named option without importing torch, timm or albumentations."""
    code = ("import sys; from typer.testing import CliRunner; from okkhor.cli import app; "
            "r = CliRunner().invoke(app, ['train', '--print-config', '--data', 'd', '--out', 'o', "
            "'--set', 'mix.kind=fmix', '--set', 'aug.preset=heavy', '--set', 'train.schedule=cosine']); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'timm', 'albumentations', 'cv2') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_bad_option_name_is_one_line_listing_the_registry():
    result = CliRunner().invoke(app, ["train", "--print-config", "--data", "d", "--out", "o",
                                      "--set", "mix.kind=blend"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "okkhor: error: config: bad value 'blend' for 'mix.kind': expected one of none, mixup, cutmix, fmix, both, "
        "dirichlet, manifold"]


def test_help_paragraphs_reflow_at_the_terminal_width():
    """Prose re-flows at 80 columns (no break inside a sentence where the docstring wrapped); examples stay."""
    out = CliRunner().invoke(app, ["import", "--help"], env={"COLUMNS": "80"}).output
    lines = [line.strip() for line in out.splitlines()]
    assert any("Each folder's labels come from MAP.csv." in line for line in lines), out
    assert "okkhor import banglalekha/train data/bl --labels bl-map.csv" in lines
    assert max(len(line) for line in out.splitlines()) <= 80


def test_reflow_joins_prose_and_keeps_indented_blocks():
    from okkhor.cli import reflow

    doc = """Summary line.

    First sentence wraps
    here. Second one.

    Examples:
      okkhor a --b
      okkhor c

    Prose before an example
    block joins too:
      okkhor d
    """
    assert reflow(doc) == ("Summary line.\n\nFirst sentence wraps here. Second one.\n\n"
                           "Examples:\n  okkhor a --b\n  okkhor c\n\n"
                           "Prose before an example block joins too:\n  okkhor d")
