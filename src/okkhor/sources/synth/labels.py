"""The labels of a synthetic split: train graphemes balanced over roots, unseen triples, or a given list of triples."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from okkhor import bengali
from okkhor.errors import OkkhorError
from okkhor.io.labels import check_labels, read_csv_checked
from okkhor.sources.synth.fonts import get_renderer
from okkhor.sources.synth.keys import LABELS_STREAM, split_rng, unseen_rng
from okkhor.targets import Targets

UNSEEN_TEST_SHARE = 0.5  # share of the unseen label triples kept for test; train may use only the rest
MISSING = ("triples", "roots")  # --missing-from DATA renders the triples DATA lacks, or all those of its lacking roots
Listed = tuple[str, int, int, int]  # a triple to render: (grapheme string, root, vowel, consonant)


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


def _cycle(rng: np.random.Generator, items: Sequence[int], n: int) -> np.ndarray:
    """n items: whole shuffled passes over `items`, so every item appears once n allows it."""
    items = np.asarray(items)
    passes = [rng.permutation(items) for _ in range(-(-n // len(items)))] if n else []
    return np.concatenate(passes)[:n] if passes else np.zeros(0, np.int64)


def _draw(rng: np.random.Generator, n: int, groups: dict[int, list], weights: dict[int, np.ndarray] | None = None
          ) -> list:
    """n items: roots cycle through `groups` (whole shuffled passes), then an item of the root's group is drawn."""
    roots = _cycle(rng, sorted(groups), n)
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


# ----------------------------------------------------------------------------------------------- given triples

def listed_samples(split: str, n: int, seed: int, listed: Sequence[Listed]) -> list[Sample]:
    """n images over the `listed` triples, evenly: whole shuffled passes over the list, so each triple appears
    once n allows it and none more than once above another; `seen` tells a triple of the train graphemes."""
    if n and not listed:
        raise OkkhorError("no label triples to draw from")
    rng = split_rng(seed, split, LABELS_STREAM)
    seen = bengali.seen_triples()
    picks = (listed[i] for i in _cycle(rng, range(len(listed)), n))
    return [Sample(g, r, v, c, (r, v, c) in seen) for g, r, v, c in picks]


def _listed_row(path: Path, row: int, text: str | None, labels: tuple[int, int, int] | None) -> Listed:
    """One row of a grapheme list as (string, triple): from its labels (and its string, checked against them),
    or from its string alone."""
    if labels is None:
        found = bengali.triples_by_string().get(text, ())
        if len(found) != 1:
            why = "not a grapheme of the class map" if not found else \
                f"written alike for triples {', '.join('/'.join(map(str, t)) for t in found)}: give the labels"
            raise OkkhorError(f"{path}: column grapheme has {text!r} (row {row + 2}), {why}")
        return (text, *found[0])
    if text is None:
        return (bengali.grapheme_string(*labels), *labels)
    if text != bengali.grapheme_string(*labels) and labels not in bengali.triples_by_string().get(text, ()):
        raise OkkhorError(f"{path}: column grapheme has {text!r} (row {row + 2}), not the grapheme of that row's "
                          f"labels {'/'.join(map(str, labels))}")
    return (text, *labels)


def read_grapheme_list(path: str | Path) -> list[Listed]:
    """The triples a CSV lists, in file order, each once: columns grapheme_root, vowel_diacritic and
    consonant_diacritic (plus, optionally, grapheme: the string to draw), or a grapheme column alone."""
    path = Path(path)
    df = read_csv_checked(path, [], "grapheme list")
    present = [t for t in bengali.TARGETS if t in df.columns]
    if (present and len(present) < len(bengali.TARGETS)) or (not present and "grapheme" not in df.columns):
        missing = [t for t in bengali.TARGETS if t not in df.columns] if present else [*bengali.TARGETS, "grapheme"]
        raise OkkhorError(f"{path}: missing column(s) {', '.join(missing)} (a grapheme list has the columns "
                          f"{', '.join(bengali.TARGETS)}, or grapheme)")
    if df.empty:
        raise OkkhorError(f"{path}: no rows")
    labels = check_labels(df, Targets.make(bengali.TARGETS, bengali.NUM_CLASSES), path).tolist() if present \
        else [None] * len(df)
    strings = df["grapheme"].astype(str).tolist() if "grapheme" in df.columns else [None] * len(df)
    rows = [_listed_row(path, i, text, None if t is None else tuple(t))
            for i, (text, t) in enumerate(zip(strings, labels, strict=True))]
    return list(dict.fromkeys(rows))


def grapheme_list() -> list[tuple[int, int, int]]:
    """The class map's grapheme list: the train graphemes' triples and the unseen triples okkhor draws, sorted."""
    return sorted(bengali.seen_triples() | set(unseen_triples()))


def missing_triples(data_dir: str | Path, missing: str = "triples") -> list[Listed]:
    """The triples of the grapheme list that DATA's train.csv lacks (`triples`), or every triple of the grapheme
    list whose root it lacks (`roots`); OkkhorError when there is none."""
    if missing not in MISSING:
        raise OkkhorError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    path = Path(data_dir) / "train.csv"
    df = read_csv_checked(path, bengali.TARGETS, "labels CSV")
    labels = check_labels(df, Targets.make(bengali.TARGETS, bengali.NUM_CLASSES), path)
    if missing == "triples":
        have = set(map(tuple, labels.tolist()))
        wanted = [t for t in grapheme_list() if t not in have]
    else:
        roots = set(labels[:, 0].tolist())
        wanted = [t for t in grapheme_list() if t[0] not in roots]
    if not wanted:
        raise OkkhorError(f"{path}: has every {'triple' if missing == 'triples' else 'root'} of the grapheme list; "
                          "nothing is missing")
    return [(bengali.grapheme_string(*t), *t) for t in wanted]
