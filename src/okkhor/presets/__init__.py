"""Config presets shipped with the package (`*.yaml` beside this file), found by name or by path."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from okkhor.errors import OkkhorError

SUFFIX = ".yaml"


@dataclass(frozen=True)
class Preset:
    """A shipped preset: its name (the file name less `.yaml`), its file, and its one-line purpose."""

    name: str
    path: Path
    purpose: str


def _purpose(path: Path) -> str:
    """The preset's first comment line, less the `#`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else ""
    return ""


def presets() -> list[Preset]:
    """Every shipped preset, by name."""
    root = Path(str(resources.files(__name__)))
    return [Preset(p.name[:-len(SUFFIX)], p, _purpose(p)) for p in sorted(root.glob(f"*{SUFFIX}"))]


def find_config(name_or_path: str | Path) -> Path:
    """A config file: an existing path as given, else the shipped preset of that name (`demo-cpu`, with or
    without `.yaml`). Anything else is one error line listing the presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
    by_name = {p.name: p.path for p in presets()}
    if path.parent == Path(".") and name in by_name:
        return by_name[name]
    raise OkkhorError(f"--config {name_or_path}: no such file, and no preset of that name; "
                      f"presets: {', '.join(by_name)} (okkhor configs lists them)")
