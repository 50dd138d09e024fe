"""okkhor synth over a list of triples: --graphemes FILE, --missing-from DATA (triples or roots), and bad lists."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from helpers import assert_one_line_error, cli
from okkhor.bengali import TARGETS, grapheme_string, known_graphemes, seen_triples
from okkhor.sources.synth.fonts import select_fonts
from okkhor.sources.synth.labels import missing_triples, read_grapheme_list, unseen_triples

FAMILY = select_fonts()[0].family  # one family and the font style: the quickest images
QUICK = ("--test", "0", "--workers", "1", "--style", "font", "--fonts", FAMILY)


def _train_csv(folder, triples) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": [f"Train_{i}" for i in range(len(triples))],
                  **{name: [t[k] for t in triples] for k, name in enumerate(TARGETS)}}).to_csv(
        folder / "train.csv", index=False)


def _written(out) -> pd.DataFrame:
    return pd.read_csv(out / "train.csv", dtype={"grapheme": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def grapheme_list() -> list[tuple[int, int, int]]:
    """The class map's grapheme list, computed here from its two parts."""
    return sorted(seen_triples() | set(unseen_triples()))


def test_missing_from_writes_exactly_the_triples_data_lacks(grapheme_list, tmp_path):
    absent = {grapheme_list[i] for i in range(0, len(grapheme_list), len(grapheme_list) // 12)}
    assert absent & seen_triples() and absent - seen_triples()  # both kinds are missing
    # DATA holds every other triple of the list, twice, plus one triple outside it (it changes nothing)
    assert (0, 3, 0) not in grapheme_list  # ং with a vowel sign is no syllable
    present = [t for t in grapheme_list if t not in absent] * 2 + [(0, 3, 0)]
    _train_csv(tmp_path / "real", present)
    n = 2 * len(absent) + 1
    code, output = cli("synth", tmp_path / "fill", "--train", n, *QUICK, "--missing-from", tmp_path / "real")
    assert code == 0, output
    assert f"over {len(absent)} listed triples" in output.strip().splitlines()[-1]
    train = _written(tmp_path / "fill")
    counts = Counter(train[list(TARGETS)].itertuples(index=False, name=None))
    assert set(counts) == absent
    assert sorted(counts.values()) == [2] * (len(absent) - 1) + [3]  # evenly: each twice, one a third time
    assert all(g == grapheme_string(*t) for g, *t in train[["grapheme", *TARGETS]].itertuples(index=False))


def test_missing_roots_are_every_listed_triple_of_the_roots_data_lacks(grapheme_list, tmp_path):
    lacking = {5, 40, 167}
    one_per_root = {t[0]: t for t in reversed(grapheme_list) if t[0] not in lacking}  # DATA lacks most triples
    _train_csv(tmp_path / "real", list(one_per_root.values()))
    wanted = [t for t in grapheme_list if t[0] in lacking]
    assert len(wanted) > 10 and {t[0] for t in wanted} == lacking
    assert [r[1:] for r in missing_triples(tmp_path / "real", "roots")] == wanted
    code, output = cli("synth", tmp_path / "roots", "--train", 10, *QUICK, "--missing-from", tmp_path / "real",
                       "--missing", "roots")
    assert code == 0, output
    assert f"10 train images cover 10 of the {len(wanted)} listed triples" in output
    written = list(_written(tmp_path / "roots")[list(TARGETS)].itertuples(index=False, name=None))
    assert len(set(written)) == 10 and set(written) <= set(wanted)


def test_graphemes_file_by_labels_or_by_string(tmp_path):
    rows = known_graphemes()
    odd = next(r for r in rows if grapheme_string(*r[1:]) != r[0])  # a train string the rule does not give
    by_labels = tmp_path / "labels.csv"
    pd.DataFrame({"grapheme_root": [13, 13, 50], "vowel_diacritic": [2, 2, 0], "consonant_diacritic": [2, 2, 0],
                  "note": ["a", "a", "b"]}).to_csv(by_labels, index=False)
    assert read_grapheme_list(by_labels) == [(grapheme_string(13, 2, 2), 13, 2, 2), (grapheme_string(50, 0, 0),
                                                                                         50, 0, 0)]
    by_string = tmp_path / "strings.csv"
    pd.DataFrame({"grapheme": [odd[0], rows[0][0]]}).to_csv(by_string, index=False)
    assert read_grapheme_list(by_string) == [odd, rows[0]]
    code, output = cli("synth", tmp_path / "out", "--train", 5, *QUICK, "--graphemes", by_string)
    assert code == 0, output
    train = _written(tmp_path / "out")
    assert sorted(Counter(train["grapheme"]).values()) == [2, 3] and set(train["grapheme"]) == {odd[0], rows[0][0]}
    assert set(train[list(TARGETS)].itertuples(index=False, name=None)) == {odd[1:], rows[0][1:]}


def test_bad_lists_fail_in_one_line_naming_file_and_column(tmp_path):
    def bad(name, frame):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    cases = [
        (tmp_path / "none.csv", ["none.csv", "not found"]),
        (bad("cols.csv", pd.DataFrame({"grapheme_root": [1], "vowel": [0]})), ["cols.csv", "vowel_diacritic"]),
        (bad("range.csv", pd.DataFrame({"grapheme_root": [1], "vowel_diacritic": [11], "consonant_diacritic": [0]})),
         ["range.csv", "vowel_diacritic", "11"]),
        (bad("text.csv", pd.DataFrame({"grapheme": ["\u0995", "abc"]})), ["text.csv", "grapheme", "'abc'", "row 3"]),
        (bad("both.csv", pd.DataFrame({"grapheme_root": [13], "vowel_diacritic": [0], "consonant_diacritic": [0],
                                       "grapheme": ["\u0996"]})), ["both.csv", "grapheme", "13/0/0"]),
    ]
    for path, needles in cases:
        assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--graphemes", path), *needles)
    assert not (tmp_path / "out").exists()
    good = bad("good.csv", pd.DataFrame({"grapheme": ["\u0995"]}))
    assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--graphemes", good,
                               "--missing-from", tmp_path), "cannot be combined")
    assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--missing", "roots"),
                          "missing-from")
    assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--missing-from", tmp_path),
                          str(tmp_path / "train.csv"), "not found")
    _train_csv(tmp_path / "real", [(0, 0, 0)])
    assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--missing-from", tmp_path / "real",
                               "--missing", "vowels"), "missing", "triples, roots")
    assert_one_line_error(*cli("synth", tmp_path / "out", "--train", 3, *QUICK, "--graphemes", good,
                               "--train-unseen-fraction", "0.5"), "train-unseen-fraction", "list of triples")
