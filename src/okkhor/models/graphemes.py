"""The auxiliary grapheme head's side: its classes (label triples seen in training), labels, seen score, routing."""
from __future__ import annotations

from typing import Sequence

import numpy as np

GRAPHEME = "grapheme"  # key of the grapheme head's probabilities beside the targets' (predict, evaluate)
ABSENT = -100          # label of an image whose triple is not a head class: cross_entropy's ignore_index


def grapheme_classes(labels: np.ndarray) -> np.ndarray:
    """The distinct label rows (one per grapheme) of labels [n, T], sorted: the head's classes [G, T] int64."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), -1)
    return np.unique(labels, axis=0)


def grapheme_index(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Head class of each label row [n] (ABSENT where its triple is not among `classes`)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), -1)
    classes = np.asarray(classes, dtype=np.int64)
    if labels.shape[1] != classes.shape[1]:
        raise ValueError(f"labels have {labels.shape[1]} targets, grapheme classes {classes.shape[1]}")
    lookup = {tuple(row): k for k, row in enumerate(classes.tolist())}
    return np.array([lookup.get(tuple(row), ABSENT) for row in labels.tolist()], dtype=np.int64)


def with_grapheme_column(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """labels [n, T] -> [n, T + 1]: the head class appended, so mixing and the loss treat it as one more target."""
    return np.concatenate([labels, grapheme_index(labels, classes)[:, None]], axis=1)


def seen_score(grapheme_probs: np.ndarray) -> np.ndarray:
    """How sure the head is that an image shows one of its graphemes: the maximum softmax probability [n]."""
    return np.asarray(grapheme_probs).max(axis=1)


def seen_auroc(seen: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of `score` against the boolean `seen` column (None when only one kind is present)."""
    from sklearn.metrics import roc_auc_score

    seen = np.asarray(seen, dtype=bool)
    if seen.all() or not seen.any():
        return None
    return float(roc_auc_score(seen, score))


def union_classes(class_sets: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of several heads' classes (an ensemble's members may have trained on other triples)."""
    return np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in class_sets]), axis=0)


def route(chosen: dict[str, np.ndarray], grapheme_probs: np.ndarray, classes: np.ndarray,
          names: Sequence[str], threshold: float = 0.5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Labels per target where an image whose grapheme head is sure (max probability >= threshold) takes the
    head's triple, and every other image keeps the component heads' labels. Returns (labels, routed mask [n])."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"route threshold must be in 0..1, got {threshold}")
    sure = seen_score(grapheme_probs) >= threshold
    best = np.asarray(classes)[np.asarray(grapheme_probs).argmax(axis=1)]
    out = {name: np.where(sure, best[:, t], chosen[name]) for t, name in enumerate(names)}
    return out, sure
