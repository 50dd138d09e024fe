"""The competition metric: equal to sklearn's macro recall, weighted 2:1:1; the ignite Metric matches it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import recall_score

from okkhor.metrics import HierarchicalRecall, hierarchical_recall, macro_recall, per_class_recall
from okkhor.targets import Targets

BENGALI = Targets.from_class_map()


@pytest.mark.parametrize("seed", range(5))
def test_macro_recall_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 30))
    y_true = rng.integers(0, n_classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, n_classes + 5, 200))  # extra pred-only classes
    expected = recall_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_recall(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_classes_only_in_predictions_count_as_zero():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class 2 never true: recall 0 pulls the mean down
    assert macro_recall(y_true, y_pred) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert macro_recall(y_true, y_pred) == pytest.approx(recall_score(y_true, y_pred, average="macro",
                                                                      zero_division=0))


def random_labels(n, targets, rng, accuracy=0.7):
    y = np.stack([rng.integers(0, c, n) for c in targets.num_classes], 1)
    noise = np.stack([rng.integers(0, c, n) for c in targets.num_classes], 1)
    return y, np.where(rng.random(y.shape) < accuracy, y, noise)


def test_hierarchical_weights_2_1_1():
    rng = np.random.default_rng(0)
    y, p = random_labels(500, BENGALI, rng)
    score, recalls = hierarchical_recall(y, p, BENGALI)
    manual = [recall_score(y[:, t], p[:, t], average="macro", zero_division=0) for t in range(3)]
    assert list(recalls) == list(BENGALI.names)
    assert score == pytest.approx((2 * manual[0] + manual[1] + manual[2]) / 4)
    assert hierarchical_recall(y, y, BENGALI)[0] == 1.0


def test_equal_weights_for_other_targets():
    t = Targets.make(["a", "b"], [3, 4])
    assert t.weights == (1.0, 1.0)
    one = Targets.make(["only"], [5])
    y = np.array([[0], [1], [2], [3]])
    assert hierarchical_recall(y, y, one)[0] == 1.0


def test_per_class_recall():
    r = per_class_recall(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 4)
    np.testing.assert_allclose(r[:3], [0.5, 1.0, 0.0])
    assert np.isnan(r[3])


def logits_for(pred, n_classes):
    out = torch.zeros(len(pred), n_classes)
    out[torch.arange(len(pred)), torch.as_tensor(pred)] = 1.0
    return out


def test_ignite_metric_equals_function_over_batches():
    rng = np.random.default_rng(1)
    y, p = random_labels(301, BENGALI, rng, accuracy=0.5)
    metric = HierarchicalRecall(BENGALI)
    metric.reset()
    for start in range(0, 301, 64):  # uneven batches: the metric must not average per batch
        sl = slice(start, start + 64)
        logits = tuple(logits_for(p[sl, t], c) for t, c in enumerate(BENGALI.num_classes))
        metric.update((logits, torch.as_tensor(y[sl])))
    got = metric.compute()
    score, recalls = hierarchical_recall(y, p, BENGALI)
    assert got["score"] == pytest.approx(score, abs=1e-12)
    for name in BENGALI.names:
        assert got[f"recall_{name}"] == pytest.approx(recalls[name], abs=1e-12)


def test_ignite_metric_rejects_bad_targets():
    with pytest.raises(TypeError):
        HierarchicalRecall(["grapheme_root"])
