"""The labels of a synthetic split: train graphemes balanced over roots, and unseen triples kept apart per split."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from okkhor import bengali
from okkhor.errors import OkkhorError
from okkhor.sources.synth.keys import LABELS_STREAM, split_rng, unseen_rng

UNSEEN_TEST_SHARE = 0.5  # share of the unseen label triples kept for test; train may use only the rest


@dataclass(frozen=True)
class Sample:
    """One image's labels and the string it shows."""

    grapheme: str
    root: int
    vowel: int
    consonant: int
    seen: bool

    @property
    def triple(self) -> tuple[int, int, int]:
        """The labels in the order of bengali.TARGETS."""
        return self.root, self.vowel, self.consonant


@lru_cache(maxsize=1)
def unseen_triples() -> tuple[tuple[int, int, int], ...]:
    """Label triples outside the train graphemes that render as a distinct, well-formed syllable, sorted.

    Dropped: triples HarfBuzz shapes as a broken cluster (e.g. ং or ঃ with a vowel sign, অ + া) and triples
    whose string equals another triple's (e.g. root র + ra-phala is written like reph + র).
    """
    from okkhor.sources.synth.shaping import get_renderer  # the synth extra

    renderer = get_renderer()
    seen = bengali.seen_triples()
    by_string: dict[str, list[tuple[int, int, int]]] = {}
    for triple in bengali.all_triples():
        by_string.setdefault(bengali.grapheme_string(*triple), []).append(triple)
    out = []
    for text, triples in by_string.items():
        if len(triples) == 1 and triples[0] not in seen:
            # a syllable on a consonant always shapes; only vowel letters and signs as roots need HarfBuzz's word
            if bengali.starts_with_consonant(text) or not renderer.is_broken_cluster(text):
                out.append(triples[0])
    return tuple(sorted(out))


def unseen_split(seed: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The unseen triples divided into (train pool, test pool), disjoint, by the seed alone."""
    pool = list(unseen_triples())
    order = unseen_rng(seed).permutation(len(pool))
    n_test = int(round(len(pool) * UNSEEN_TEST_SHARE))
    test = sorted(pool[i] for i in order[:n_test])
    train = sorted(pool[i] for i in order[n_test:])
    return train, test


def _root_cycle(rng: np.random.Generator, roots: Sequence[int], n: int) -> np.ndarray:
    """n roots: whole shuffled passes over `roots`, so every root appears once n allows it."""
    roots = np.asarray(roots)
    passes = [rng.permutation(roots) for _ in range(-(-n // len(roots)))] if n else []
    return np.concatenate(passes)[:n] if passes else np.zeros(0, np.int64)


def _draw(rng: np.random.Generator, n: int, groups: dict[int, list], weights: dict[int, np.ndarray] | None = None
          ) -> list:
    """n items: roots cycle through `groups` (whole shuffled passes), then an item of the root's group is drawn."""
    roots = _root_cycle(rng, sorted(groups), n)
    picks: list = [None] * n
    for root in sorted(groups):
        where = np.flatnonzero(roots == root)
        if where.size:
            items = groups[root]
            p = None if weights is None else weights[root]
            for i, k in zip(where, rng.choice(len(items), size=where.size, p=p), strict=False):
                picks[i] = items[k]
    return picks


def _seen_samples(rng: np.random.Generator, n: int) -> list[Sample]:
    """Train graphemes (graphemes.csv rows), balanced over roots; rarer diacritics weigh more within a root."""
    rows = bengali.known_graphemes()
    vowel_counts = np.bincount([r[2] for r in rows], minlength=bengali.NUM_CLASSES[1])
    cons_counts = np.bincount([r[3] for r in rows], minlength=bengali.NUM_CLASSES[2])
    groups: dict[int, list] = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    weights = {}
    for root, items in groups.items():
        w = np.array([1 / math.sqrt(vowel_counts[v] * cons_counts[c]) for _, _, v, c in items])
        weights[root] = w / w.sum()
    return [Sample(g, r, v, c, True) for g, r, v, c in _draw(rng, n, groups, weights)]


def _unseen_samples(rng: np.random.Generator, n: int, pool: Sequence[tuple[int, int, int]]) -> list[Sample]:
    """Triples from `pool`, balanced over roots, uniform within a root."""
    if n and not pool:
        raise OkkhorError("no unseen label triples are available")
    groups: dict[int, list] = {}
    for t in pool:
        groups.setdefault(t[0], []).append(t)
    return [Sample(bengali.grapheme_string(r, v, c), r, v, c, False) for r, v, c in _draw(rng, n, groups)]


def sample_labels(split: str, n: int, unseen_fraction: float, seed: int) -> list[Sample]:
    """The labels of a split's n images, a function of (seed, split, n, fraction); unseen ones are spread out."""
    rng = split_rng(seed, split, LABELS_STREAM)
    n_unseen = int(round(n * unseen_fraction))
    train_pool, test_pool = unseen_split(seed)
    samples = _seen_samples(rng, n - n_unseen) + _unseen_samples(rng, n_unseen,
                                                                 test_pool if split == "test" else train_pool)
    return [samples[i] for i in rng.permutation(n)]
