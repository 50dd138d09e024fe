"""Hierarchical macro recall, the competition metric: one function and one ignite Metric, same numbers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from okkhor.targets import Targets


def macro_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's recall_score(average='macro'): mean over labels present in y_true or y_pred; 0 for absent ones."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)})")
    if len(y_true) == 0:
        raise ValueError("macro recall of an empty set")
    labels = np.union1d(y_true, y_pred)
    idx_true = np.searchsorted(labels, y_true)
    support = np.bincount(idx_true, minlength=len(labels))
    hits = np.bincount(idx_true[y_true == y_pred], minlength=len(labels))
    recall = np.divide(hits, support, out=np.zeros(len(labels)), where=support > 0)
    return float(recall.mean())


def recall_from_counts(support: np.ndarray, hits: np.ndarray, predicted: np.ndarray) -> float:
    """Macro recall from per-class counts: classes count when seen in truth or prediction."""
    present = (support > 0) | (predicted > 0)
    if not present.any():
        raise ValueError("macro recall of an empty set")
    recall = np.divide(hits, support, out=np.zeros(len(support), dtype=np.float64), where=support > 0)
    return float(recall[present].mean())


def weighted_score(recalls: Sequence[float], weights: Sequence[float]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    return float(np.dot(np.asarray(recalls, dtype=np.float64), w) / w.sum())


def hierarchical_recall(y_true: np.ndarray, y_pred: np.ndarray, targets: Targets) -> tuple[float, dict[str, float]]:
    """Labels [n, T] true and predicted -> (weighted score, {target: macro recall})."""
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred).reshape(len(y_pred), -1)
    recalls = {name: macro_recall(y_true[:, t], y_pred[:, t]) for t, name in enumerate(targets.names)}
    return weighted_score(list(recalls.values()), targets.weights), recalls


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of every class 0..C-1 (NaN where the class has no true sample)."""
    support = np.bincount(y_true, minlength=num_classes).astype(np.float64)
    hits = np.bincount(y_true[y_true == y_pred], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / support, np.nan)


class HierarchicalRecall(Metric):
    """Accumulates per-class counts over batches (and processes); computes the same value as `hierarchical_recall`.

    `output_transform` must give (logits, y): logits a sequence of [B, C_t] tensors (one per target) and y a
    LongTensor [B, T]. Outputs and label columns past the T targets (an auxiliary grapheme head's) are not read.
    `compute()` returns {"score": float, "recall_<target>": float, ...}.
    """

    def __init__(self, targets: Targets, output_transform=lambda x: x, device: str | torch.device = "cpu"):
        if not isinstance(targets, Targets):
            raise TypeError(f"targets must be a Targets, got {type(targets).__name__}")
        self.targets = targets
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._support = [torch.zeros(n, dtype=torch.int64, device=self._device) for n in self.targets.num_classes]
        self._hits = [torch.zeros(n, dtype=torch.int64, device=self._device) for n in self.targets.num_classes]
        self._predicted = [torch.zeros(n, dtype=torch.int64, device=self._device) for n in self.targets.num_classes]
        self._count = 0

    @reinit__is_reduced
    def update(self, output) -> None:
        logits, y = output
        if len(logits) < len(self.targets) or y.shape[1] < len(self.targets):
            raise ValueError(f"expected {len(self.targets)} outputs and label columns, got {len(logits)} and "
                             f"{y.shape[1]}")
        # counts by scatter_add into fixed-size tensors: unlike bincount (whose output size depends on the data)
        # and boolean indexing, nothing here waits for the device; the counts are read once, in compute()
        y = y.to(self._device, non_blocking=True)
        for t, out in enumerate(logits[:len(self.targets)]):
            pred = out.argmax(dim=1).to(self._device) if out.ndim == 2 else out.to(self._device).long()
            true = y[:, t].long()
            ones = torch.ones_like(true)
            self._support[t].scatter_add_(0, true, ones)
            self._hits[t].scatter_add_(0, true, (pred == true).long())
            self._predicted[t].scatter_add_(0, pred, ones)
        self._count += int(y.shape[0])

    def compute(self) -> dict[str, float]:
        import ignite.distributed as idist

        support = [idist.all_reduce(s.clone()) for s in self._support]
        hits = [idist.all_reduce(h.clone()) for h in self._hits]
        predicted = [idist.all_reduce(p.clone()) for p in self._predicted]
        if int(support[0].sum()) == 0:
            raise NotComputableError("HierarchicalRecall must have at least one example before it can be computed")
        recalls = [recall_from_counts(s.cpu().numpy(), h.cpu().numpy(), p.cpu().numpy())
                   for s, h, p in zip(support, hits, predicted, strict=False)]
        result = {"score": weighted_score(recalls, self.targets.weights)}
        result.update({f"recall_{name}": r for name, r in zip(self.targets.names, recalls, strict=False)})
        return result


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, targets: Targets) -> tuple[dict[str, float], float]:
    """({target: share of images whose label is right}, share of images with every target right)."""
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred).reshape(len(y_pred), -1)
    if len(y_true) == 0:
        raise ValueError("accuracy of an empty set")
    right = y_true == y_pred
    return {name: float(right[:, t].mean()) for t, name in enumerate(targets.names)}, float(right.all(axis=1).mean())


def summary(y_true: np.ndarray, y_pred: np.ndarray, targets: Targets) -> dict:
    """{"images", "score", "recall": {t: r}, "accuracy": {t: a}, "exact"} of one labelled set."""
    score, recalls = hierarchical_recall(y_true, y_pred, targets)
    acc, exact = accuracy(y_true, y_pred, targets)
    return {"images": int(len(y_true)), "score": score, "recall": recalls, "accuracy": acc, "exact": exact}


GROUP_COLUMNS = ("seen", "font_seen")  # boolean columns a labels file may carry; results break down by them


def cell_name(parts: dict[str, bool]) -> str:
    """'seen/font_unseen' for {"seen": True, "font_seen": False}: each column's value as <name> or un<name>."""
    return "/".join(name if value else ("un" + name if name == "seen" else name.replace("_seen", "_unseen"))
                    for name, value in parts.items())


def by_groups(y_true: np.ndarray, y_pred: np.ndarray, targets: Targets, groups: dict[str, np.ndarray]) -> dict:
    """The breakdown by the boolean group columns present (a subset of GROUP_COLUMNS, in that order).

    "by_<column>" for each column: {"<column>", "un..."} -> score of those rows (None for no rows), e.g.
    "by_seen": {"seen", "unseen"} and "by_font_seen": {"font_seen", "font_unseen"}; "by_cell": every combination
    of the columns' values -> summary() of its rows (None for no rows).
    """
    out: dict = {}
    names = [g for g in GROUP_COLUMNS if g in groups]
    masks = {n: np.asarray(groups[n], dtype=bool) for n in names}
    score = lambda m: hierarchical_recall(y_true[m], y_pred[m], targets)[0] if m.any() else None  # noqa: E731
    for n in names:
        out[f"by_{n}"] = {cell_name({n: value}): score(masks[n] == value) for value in (True, False)}
    if not names:
        return out
    cells: dict = {}
    for values in np.ndindex(*(2,) * len(names)):
        parts = {n: not bool(v) for n, v in zip(names, values, strict=False)}  # True first
        mask = np.ones(len(y_true), dtype=bool)
        for n, value in parts.items():
            mask &= masks[n] == value
        cells[cell_name(parts)] = summary(y_true[mask], y_pred[mask], targets) if mask.any() else None
    out["by_cell"] = cells
    return out
