"""Argument checks of the synthesizer's entry points: counts, fractions and the preview's path."""
from __future__ import annotations

from numbers import Integral
from pathlib import Path

from okkhor.errors import OkkhorError


def check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise OkkhorError(f"{name} must be a number in 0..1, got {value!r}")
    return float(value)


def check_count(name: str, value: int, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (
            high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise OkkhorError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_preview(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OkkhorError(f"{path}: the preview must be a .png file")
    return path
