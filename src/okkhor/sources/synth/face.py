"""A font face to render with: FontSpec, what the shaping engine draws in and the font lists are made of."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FontSpec:
    """One font face to render with: a file, plus a design weight when the file is a variable font."""

    name: str
    family: str
    path: Path
    weight: float | None = None


def slug(text: str) -> str:
    """A font or family name as okkhor spells it: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
