"""The Bengali script as data: targets, class counts, components, train graphemes and grapheme strings."""
from __future__ import annotations

import numpy as np
import pytest

from okkhor import bengali
from okkhor.bengali import grapheme_string, known_graphemes
from okkhor.targets import Targets


def test_targets_counts_and_components_agree_with_the_shipped_class_map():
    built_in = Targets.from_class_map()
    assert built_in.names == bengali.TARGETS and built_in.num_classes == bengali.NUM_CLASSES == (168, 11, 7)
    assert built_in.weights == bengali.WEIGHTS == (2.0, 1.0, 1.0)
    assert Targets.make(["a", "b"], [3, 4]).weights == (1.0, 1.0)
    comps = bengali.class_components()
    assert tuple(len(comps[n]) for n in bengali.TARGETS) == (168, 11, 7)
    for name in bengali.TARGETS:  # the class map's strings, with '0' (no diacritic) read as ''
        expected = tuple("" if name != "grapheme_root" and s == "0" else s for s in built_in.components[name])
        assert comps[name] == expected
    assert comps["vowel_diacritic"][0] == "" and comps["grapheme_root"][13] == "\u0995"
    assert bengali.is_bengali(built_in.names, built_in.num_classes)
    assert not bengali.is_bengali(built_in.names, (168, 11, 6))


def test_train_graphemes_and_their_triples():
    rows = known_graphemes()
    assert len(rows) == 1295 and rows[0] == ("\u0982", 0, 0, 0)
    assert len(bengali.seen_triples()) == 1292 == len({(r, v, c) for _, r, v, c in rows})
    assert sum(1 for _ in bengali.all_triples()) == 168 * 11 * 7
    by_string = bengali.triples_by_string()
    assert all(by_string[g] == ((r, v, c),) for g, r, v, c in rows)
    assert by_string[grapheme_string(50, 3, 0)] == ((50, 3, 0),)


def test_grapheme_string_rule_and_exceptions():
    assert grapheme_string(13, 0, 0) == "\u0995"  # ক
    assert grapheme_string(13, 2, 2) == "\u09b0\u09cd\u0995\u09bf"  # র্কি
    assert grapheme_string(13, 0, 6) == "\u0995\u09cd\u09b0\u09cd\u09af"  # ক্র্য
    assert grapheme_string(123, 1, 4) == "\u09b0\u200d\u09cd\u09af\u09be"  # র + ZWJ + ্য + া
    assert grapheme_string(165, 0, 0) == "\u09dc"  # precomposed ড়, never normalised
    assert grapheme_string(np.int64(13), np.int32(0), 0) == "\u0995"
    rule_misses = [(g, r, v, c) for g, r, v, c in known_graphemes() if grapheme_string(r, v, c) != g]
    assert len(rule_misses) == 3 and all(c == 2 for *_, c in rule_misses)
    with pytest.raises(ValueError, match="vowel_diacritic"):
        grapheme_string(0, 11, 0)
    with pytest.raises(ValueError, match="grapheme_root"):
        grapheme_string(True, 0, 0)


def test_inventory_and_consonant_starts():
    chars = bengali.inventory()
    assert bengali.ZWJ in chars and bengali.VIRAMA in chars and "\u0995" in chars and "0" not in chars
    assert bengali.starts_with_consonant("\u09b0\u09cd\u0995") and bengali.starts_with_consonant("\u09df")
    assert not bengali.starts_with_consonant("\u0985") and not bengali.starts_with_consonant("")
