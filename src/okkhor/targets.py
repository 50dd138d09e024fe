"""Targets are data: names, class counts and metric weights come from a class map or a config."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import pandas as pd

from okkhor import bengali
from okkhor.errors import OkkhorError

CLASS_MAP_COLUMNS = ("component_type", "label", "component")


@dataclass(frozen=True)
class Targets:
    """The prediction targets of a dataset: one classification head each."""

    names: tuple[str, ...]
    num_classes: tuple[int, ...]
    weights: tuple[float, ...]
    components: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise OkkhorError("targets: at least one target is needed")
        if not (len(self.names) == len(self.num_classes) == len(self.weights)):
            raise OkkhorError("targets: names, num_classes and weights must have the same length")
        for name, n in zip(self.names, self.num_classes, strict=False):
            if n < 1:
                raise OkkhorError(f"targets: {name} has {n} classes; at least 1 is needed")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def make(cls, names: Sequence[str], num_classes: Sequence[int], weights: Sequence[float] | None = None,
             components: dict[str, tuple[str, ...]] | None = None) -> "Targets":
        """Build targets; weights default to 2,1,1 for the Bengali three, equal otherwise."""
        names = tuple(names)
        if weights is None or len(weights) == 0:
            weights = bengali.WEIGHTS if names == bengali.TARGETS else (1.0,) * len(names)
        return cls(names, tuple(int(n) for n in num_classes), tuple(float(w) for w in weights), components or {})

    @classmethod
    def from_class_map(cls, path: str | Path | None = None, weights: Sequence[float] | None = None) -> "Targets":
        """Read a Kaggle `class_map.csv` (component_type,label,component); None means the built-in Bengali map."""
        if path is None:
            with resources.files("okkhor.resources").joinpath("class_map.csv").open("rb") as f:
                df = pd.read_csv(f, dtype={"component": str}, keep_default_na=False)
            where = "built-in class_map.csv"
        else:
            path = Path(path)
            if not path.is_file():
                raise OkkhorError(f"{path}: file not found")
            try:
                df = pd.read_csv(path, dtype={"component": str}, keep_default_na=False)
            except Exception as exc:  # pandas raises many kinds for broken CSVs
                raise OkkhorError(f"{path}: cannot read CSV ({exc.__class__.__name__}: {exc})") from None
            where = str(path)
        missing = [c for c in CLASS_MAP_COLUMNS if c not in df.columns]
        if missing:
            raise OkkhorError(f"{where}: missing column(s) {', '.join(missing)}")
        names: list[str] = []
        counts: list[int] = []
        components: dict[str, tuple[str, ...]] = {}
        for name, group in df.groupby("component_type", sort=False):
            labels = group["label"].astype(int).tolist()
            if sorted(labels) != list(range(len(labels))):
                raise OkkhorError(f"{where}: labels of {name} must be 0..{len(labels) - 1} without gaps")
            names.append(str(name))
            counts.append(len(labels))
            components[str(name)] = tuple(group.sort_values("label")["component"].tolist())
        return cls.make(names, counts, weights, components)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "num_classes": list(self.num_classes), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, d: dict) -> "Targets":
        return cls.make(d["names"], d["num_classes"], d.get("weights"))
