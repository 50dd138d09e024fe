"""The Bengali script as data: the three targets and their weights, components, train graphemes, grapheme strings."""
from __future__ import annotations

import csv
import functools
from importlib import resources
from numbers import Integral
from typing import Iterator

TARGETS = ("grapheme_root", "vowel_diacritic", "consonant_diacritic")
NUM_CLASSES = (168, 11, 7)  # classes of each target in the competition's class map (resources/class_map.csv)
WEIGHTS = (2.0, 1.0, 1.0)  # the competition metric's weights of the targets' macro recalls
SHORT_NAMES = {"grapheme_root": "r", "vowel_diacritic": "v", "consonant_diacritic": "c"}  # captions: r12 v3 c0

ZWJ = "\u200d"
VIRAMA = "\u09cd"  # hasanta
REPH = "\u09b0\u09cd"  # র + hasanta before a consonant: drawn as a reph over it
CONSONANT_DIACRITIC_RULE = {  # consonant label -> (prefix, suffix before the vowel, suffix after the vowel)
    0: ("", "", ""),
    1: ("", "", "\u0981"),
    2: (REPH, "", ""),
    3: (REPH, "\u09cd\u09af", ""),
    4: ("", "\u09cd\u09af", ""),
    5: ("", "\u09cd\u09b0", ""),
    6: ("", "\u09cd\u09b0\u09cd\u09af", ""),
}
ZWJ_TRIPLES = {(123, 1, 4)}  # র + ZWJ + ্য + া: the ZWJ stops a reph from forming

Triple = tuple[int, int, int]


def _resource_rows(name: str) -> list[dict[str, str]]:
    with resources.files("okkhor.resources").joinpath(name).open("r", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@functools.lru_cache(maxsize=1)
def class_components() -> dict[str, tuple[str, ...]]:
    """The built-in class map as {target: (string of label 0, label 1, ...)}; '' for 'no diacritic'."""
    out: dict[str, list[str]] = {name: [""] * n for name, n in zip(TARGETS, NUM_CLASSES, strict=True)}
    for row in _resource_rows("class_map.csv"):
        name, label, text = row["component_type"], int(row["label"]), row["component"]
        out[name][label] = "" if (name != "grapheme_root" and text == "0") else text
    return {name: tuple(values) for name, values in out.items()}


@functools.lru_cache(maxsize=1)
def known_graphemes() -> tuple[tuple[str, int, int, int], ...]:
    """The 1,295 train graphemes shipped as graphemes.csv: (grapheme, root, vowel, consonant) rows, file order."""
    return tuple((r["grapheme"], int(r["root"]), int(r["vowel"]), int(r["consonant"]))
                 for r in _resource_rows("graphemes.csv"))


@functools.lru_cache(maxsize=1)
def _known_strings_by_triple() -> dict[Triple, tuple[str, ...]]:
    out: dict[Triple, tuple[str, ...]] = {}
    for g, r, v, c in known_graphemes():
        out[(r, v, c)] = out.get((r, v, c), ()) + (g,)
    return out


def seen_triples() -> frozenset[Triple]:
    """The 1,292 distinct (root, vowel, consonant) label triples of the train graphemes."""
    return frozenset(_known_strings_by_triple())


def all_triples() -> Iterator[Triple]:
    """Every (root, vowel, consonant) label triple of the class map, in label order."""
    for r in range(NUM_CLASSES[0]):
        for v in range(NUM_CLASSES[1]):
            for c in range(NUM_CLASSES[2]):
                yield r, v, c


def check_triple(root: int, vowel: int, consonant: int, where: str = "grapheme_string") -> Triple:
    """The triple as ints; ValueError naming the target when a label is not an integer in its range."""
    for name, n, value in zip(TARGETS, NUM_CLASSES, (root, vowel, consonant), strict=True):
        if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value < n:
            raise ValueError(f"{where}: {name} must be an integer in 0..{n - 1}, got {value!r}")
    return int(root), int(vowel), int(consonant)


def _rule_string(root: int, vowel: int, consonant: int) -> str:
    comps = class_components()
    prefix, middle, suffix = CONSONANT_DIACRITIC_RULE[consonant]
    if (root, vowel, consonant) in ZWJ_TRIPLES:
        middle = ZWJ + middle
    return prefix + comps["grapheme_root"][root] + middle + comps["vowel_diacritic"][vowel] + suffix


def grapheme_string(root: int, vowel: int, consonant: int) -> str:
    """The grapheme string of a label triple by the composition rule (with its ZWJ exception).

    When the triple is among the train graphemes and none of its strings equals the rule's, the train string
    is returned. Strings are never Unicode-normalised (ড় ঢ় য় are precomposed code points).
    """
    triple = check_triple(root, vowel, consonant)
    text = _rule_string(*triple)
    known = _known_strings_by_triple().get(triple, ())
    if known and text not in known:
        return known[0]
    return text


@functools.lru_cache(maxsize=1)
def triples_by_string() -> dict[str, tuple[Triple, ...]]:
    """Every grapheme string (the train graphemes' and the rule's of every triple) -> the triples written so.

    A train grapheme's string names its own triple only; a rule string can name several triples (e.g. root র
    with ra-phala is written like reph + র).
    """
    out: dict[str, tuple[Triple, ...]] = {g: ((r, v, c),) for g, r, v, c in known_graphemes()}
    rules: dict[str, tuple[Triple, ...]] = {}
    for triple in all_triples():
        text = grapheme_string(*triple)
        rules[text] = rules.get(text, ()) + (triple,)
    return {**rules, **out}


def starts_with_consonant(text: str) -> bool:
    """Whether the grapheme's root starts with a Bengali consonant letter (after a reph, if any)."""
    root = text[len(REPH):] if text.startswith(REPH) else text
    return bool(root) and ("\u0995" <= root[0] <= "\u09b9" or root[0] in "\u09dc\u09dd\u09df")


def inventory() -> frozenset[str]:
    """Every code point a grapheme of the class map needs, ZWJ included."""
    chars = {ZWJ}
    for values in class_components().values():
        for s in values:
            chars.update(s)
    return frozenset(chars)


def is_bengali(names: tuple[str, ...], num_classes: tuple[int, ...]) -> bool:
    """Whether targets are the Bengali three with the class map's class counts (grapheme strings apply)."""
    return tuple(names) == TARGETS and tuple(num_classes) == NUM_CLASSES
