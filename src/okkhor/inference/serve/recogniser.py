"""Image bytes -> the competition page (as `okkhor import` makes it) -> okkhor predict's probabilities -> answers."""
from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import okkhor
from okkhor import bengali
from okkhor.data.prepare import EDGE, INK_THRESHOLD
from okkhor.errors import OkkhorError
from okkhor.inference.evaluate import with_components
from okkhor.inference.predict import Member, check_tta, decide, grapheme_space, raw_probs
from okkhor.inference.serve.models import load_models
from okkhor.io import checkpoint
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH
from okkhor.io.labels import load_targets
from okkhor.models.graphemes import GRAPHEME, seen_score
from okkhor.sources.imagefolder import load_image, to_page
from okkhor.targets import Targets
from okkhor.utils.sizes import hw

MAX_IMAGE_PIXELS = 4096 * 4096   # width x height of one image; larger ones are refused (413) before decoding
IMAGE_FORMATS = ("PNG", "JPEG")  # Pillow's names of the formats taken
TOP_K = 5


class BadInput(OkkhorError):
    """A request the server refuses: one line for the client and the log, and its HTTP status (4xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_page(data: bytes, name: str = "image") -> np.ndarray:
    """A PNG or JPEG file's bytes -> uint8 [137, 236], dark ink on a light page, as `okkhor import` writes it
    (okkhor.sources.imagefolder's load_image and to_page: light-on-dark inverted, scaled onto the page).

    Empty bytes, a file that is not a PNG or JPEG, a blank image (no ink by okkhor prepare's threshold) are a
    BadInput 422 (415 for another image format); an image over MAX_IMAGE_PIXELS a 413, found from its header."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(422, f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as header:   # reads the header only: the size before any decoding
            kind, (width, height) = header.format, header.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput(422, f"{name}: not a PNG or JPEG image ({len(data)} bytes)") from None
    if kind not in IMAGE_FORMATS:
        raise BadInput(415, f"{name}: a {kind} image; send PNG or JPEG")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadInput(413, f"{name}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} pixels")
    with tempfile.NamedTemporaryFile(suffix=f".{kind.lower()}") as tmp:   # load_image reads a file, as import does
        tmp.write(data)
        tmp.flush()
        img = load_image(tmp.name)
    if img is None:
        raise BadInput(422, f"{name}: a {kind} file that cannot be decoded (truncated or corrupt)")
    page, _ = to_page(img)
    inverted = 255 - page[EDGE:-EDGE, EDGE:-EDGE]
    if not (inverted > INK_THRESHOLD).any():
        raise BadInput(422, f"{name}: blank image (no ink found)")
    return page


@dataclass
class Recogniser:
    """An ensemble with okkhor predict's inference (raw_probs, decide) and the answers the API sends."""

    members: list[Member]
    targets: Targets            # with the component texts of the class map, where it has them
    tta: int = 1
    class_map: str = "built-in"

    def __post_init__(self) -> None:
        check_tta(self.tta)

    @property
    def grapheme_head(self) -> bool:
        return grapheme_space(self.members) is not None

    def predict(self, pages: np.ndarray) -> list[dict[str, Any]]:
        """Answers for pages uint8 [n, 137, 236] (one forward pass per member), in order."""
        probs = raw_probs(self.members, pages, tta=self.tta, batch_size=max(1, len(pages)))
        return self.answers(probs)

    def answers(self, probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per image: each target's label, component text and top 5 [label, probability]; the grapheme string;
        `seen_score` when the ensemble has a grapheme head."""
        labels = decide(probs)
        out = []
        for i in range(len(labels[self.targets.names[0]])):
            item: dict[str, Any] = {}
            for name in self.targets.names:
                p = probs[name][i]
                top = np.argsort(-p, kind="stable")[:TOP_K]
                label = int(labels[name][i])
                item[name] = {"label": label, "text": self.text(name, label),
                              "top": [[int(k), float(p[k])] for k in top]}
            item["grapheme"] = self.grapheme([int(labels[name][i]) for name in self.targets.names])
            if GRAPHEME in probs:
                item["seen_score"] = float(seen_score(probs[GRAPHEME][i:i + 1])[0])
            out.append(item)
        return out

    def text(self, name: str, label: int) -> str:
        """The class map's component text of a label ('0' for no diacritic), or the label itself without one."""
        comps = self.targets.components.get(name, ())
        return comps[label] if label < len(comps) else str(label)

    def grapheme(self, labels: Sequence[int]) -> str:
        """The grapheme string: okkhor.bengali's composition rule for the Bengali three, else the component texts
        joined, leaving out the other targets' "0" ("no diacritic")."""
        if (self.targets.names, self.targets.num_classes) == (bengali.TARGETS, bengali.NUM_CLASSES):
            return bengali.grapheme_string(*labels)
        texts = [self.text(n, v) for n, v in zip(self.targets.names, labels, strict=True)]
        return "".join(t for k, t in enumerate(texts) if k == 0 or t != "0")

    def describe(self) -> dict[str, Any]:
        """What GET /model answers."""
        sizes = sorted({hw(m.cfg.data.image_size) for m in self.members})
        return {
            "targets": [{"name": n, "classes": c, "components": [self.text(n, k) for k in range(c)]}
                        for n, c in zip(self.targets.names, self.targets.num_classes, strict=True)],
            "grapheme_head": self.grapheme_head,
            "page": [IMAGE_HEIGHT, IMAGE_WIDTH],
            "image_size": [list(s) for s in sizes],
            "crop": sorted({bool(m.cfg.data.crop) for m in self.members}),
            "tta": self.tta,
            "models": [{"file": str(m.path), "format": m.meta.get("format", "checkpoint")} for m in self.members],
            "class_map": self.class_map,
            "okkhor_version": okkhor.__version__,
        }


def load_recogniser(paths: Sequence[str | Path], device: str = "auto", tta: int = 1,
                    class_map: str | Path | None = None) -> Recogniser:
    """Load the models; the component texts come from `class_map`, else the first checkpoint's data dir's
    class_map.csv (or its data.class_map), else the built-in Bengali map, for the targets whose class counts agree."""
    check_tta(tta)
    members = load_models(paths, device)
    first = members[0]
    if class_map:
        full = load_targets(None, str(class_map))
        for name, n in zip(first.targets.names, first.targets.num_classes, strict=True):
            if len(full.components.get(name, ())) != n:
                raise OkkhorError(f"--class-map {class_map}: has {len(full.components.get(name, ()))} classes of "
                                  f"{name}, the model predicts {n}")
        return Recogniser(members, with_components(first.targets, None, str(class_map)), tta, str(class_map))
    data_dir = next((d for d in (checkpoint.data_dir(m.meta) for m in members) if d is not None), None)
    own = first.cfg.data.class_map if first.cfg.data.class_map and Path(first.cfg.data.class_map).is_file() else ""
    if own:
        source = own
    elif data_dir is not None and (data_dir / "class_map.csv").is_file():
        source = str(data_dir / "class_map.csv")
    else:
        source, data_dir = "built-in", None
    targets = with_components(first.targets, data_dir, own)
    return Recogniser(members, targets, tta, source if targets.components else "none")
