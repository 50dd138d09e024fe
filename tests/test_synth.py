"""The synthetic generator: competition file format, labels, seen/unseen triples, images, determinism, shaping."""
from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from okkhor.bengali import grapheme_string, known_graphemes, seen_triples
from okkhor.cli import app
from okkhor.errors import OkkhorError
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, N_PIXELS, image_parquet_files, iter_image_parquet
from okkhor.io.layout import file_rows
from okkhor.sources.synth.fonts import render_grapheme, select_fonts
from okkhor.sources.synth.imager import Imager
from okkhor.sources.synth.keys import image_rng
from okkhor.sources.synth.labels import sample_labels
from okkhor.sources.synth.plan import plan_draws
from okkhor.sources.synth.shaping import FontRenderer, check_shaping, self_check_fonts
from okkhor.sources.synth.writer import synthesize

runner = CliRunner()
N_TRAIN, N_TEST, SEED = 60, 30, 7
ARGS = dict(unseen_test_fraction=0.4, train_unseen_fraction=0.25)
TARGETS = ["grapheme_root", "vowel_diacritic", "consonant_diacritic"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One small dataset made in this process (workers=1), with its label files and decoded images."""
    out = tmp_path_factory.mktemp("synth") / "one"
    summary = synthesize(out, N_TRAIN, N_TEST, seed=SEED, workers=1, progress=False, **ARGS)
    images = {}
    for split in ("train", "test"):
        ids, parts = [], []
        for path in image_parquet_files(out, split):
            for batch_ids, batch in iter_image_parquet(path, batch_rows=256):
                ids += batch_ids
                parts.append(batch)
        images[split] = (ids, np.concatenate(parts))
    read = lambda name: pd.read_csv(out / name, dtype={"grapheme": str}, keep_default_na=False)  # noqa: E731
    return dict(out=out, summary=summary, images=images, train=read("train.csv"), test=read("test.csv"),
                labels=read("test_labels.csv"), submission=read("sample_submission.csv"))


def test_files_follow_the_competition_format(made):
    out, train, test, labels = made["out"], made["train"], made["test"], made["labels"]
    names = {p.name for p in out.iterdir()}
    assert names == {"train.csv", "test.csv", "test_labels.csv", "class_map.csv", "sample_submission.csv",
                     "train_image_data_0.parquet", "test_image_data_0.parquet"}
    assert list(train.columns) == ["image_id", *TARGETS, "grapheme", "font", "font_seen"]
    assert train["image_id"].tolist() == [f"Train_{i}" for i in range(N_TRAIN)]
    assert list(test.columns) == ["row_id", "image_id", "component"]
    assert len(test) == 3 * N_TEST
    assert test["image_id"].tolist() == [f"Test_{i}" for i in range(N_TEST) for _ in range(3)]
    assert test["component"].tolist()[:3] == ["consonant_diacritic", "grapheme_root", "vowel_diacritic"]
    assert (test["row_id"] == test["image_id"] + "_" + test["component"]).all()
    assert test.groupby("image_id")["component"].nunique().eq(3).all()
    assert made["submission"]["row_id"].tolist() == test["row_id"].tolist()
    assert (made["submission"]["target"] == 0).all()
    assert list(labels.columns) == ["image_id", *TARGETS, "grapheme", "seen", "font", "font_seen"]
    assert set((out / "test_labels.csv").read_text(encoding="utf-8").splitlines()[1].split(",")[-3::2]) <= {
        "True", "False"}
    shipped = resources.files("okkhor.resources").joinpath("class_map.csv").read_bytes()
    assert (out / "class_map.csv").read_bytes() == shipped

    import pyarrow.parquet as pq

    schema = pq.ParquetFile(out / "train_image_data_0.parquet").schema_arrow
    assert schema.names == ["image_id"] + [str(i) for i in range(N_PIXELS)]
    assert all(str(schema.field(i).type) == "uint8" for i in range(1, len(schema.names)))
    for split, n, frame in (("train", N_TRAIN, train), ("test", N_TEST, labels)):
        ids, images = made["images"][split]
        assert ids == frame["image_id"].tolist()
        assert images.shape == (n, IMAGE_HEIGHT, IMAGE_WIDTH) and images.dtype == np.uint8


def test_grapheme_strings_follow_the_composition_rule(made):
    rows = {(g, r, v, c) for g, r, v, c in known_graphemes()}
    for frame in (made["train"], made["labels"]):
        for g, r, v, c in frame[["grapheme", *TARGETS]].itertuples(index=False):
            assert g == grapheme_string(r, v, c) or (g, r, v, c) in rows, (g, r, v, c)


def test_unseen_triples_are_unseen_and_never_in_train(made):
    seen = seen_triples()
    train, labels = made["train"], made["labels"]
    train_triples = set(train[TARGETS].itertuples(index=False, name=None))
    n_train_unseen = sum(t not in seen for t in train_triples)
    assert sum(tuple(t) not in seen for t in train[TARGETS].itertuples(index=False)) == round(0.25 * N_TRAIN)
    assert n_train_unseen > 0
    for *triple, flag in labels[[*TARGETS, "seen"]].itertuples(index=False):
        assert bool(flag) == (tuple(triple) in seen)
        if not flag:
            assert tuple(triple) not in train_triples
    assert (~labels["seen"].astype(bool)).sum() == round(0.4 * N_TEST)
    assert made["summary"]["test_unseen"] == round(0.4 * N_TEST)


def test_images_have_legible_ink_on_a_light_background(made):
    for split in ("train", "test"):
        images = made["images"][split][1]
        ink = (images < 128).mean(axis=(1, 2))
        assert ink.min() >= 0.005 and ink.max() <= 0.45, (ink.min(), ink.max())
        assert 0.02 <= float(np.median(ink)) <= 0.30
        border = np.concatenate([images[:, :2].reshape(len(images), -1), images[:, -2:].reshape(len(images), -1)], 1)
        assert np.median(border) >= 235 and np.percentile(border, 1) >= 200
        assert images.reshape(len(images), -1).min(axis=1).max() <= 140  # every image has dark ink


def test_same_seed_gives_identical_files_whatever_the_workers(made, tmp_path):
    """The CLI with 2 worker processes writes the same bytes as the library in-process, plus a preview."""
    out, preview = tmp_path / "two", tmp_path / "preview.png"
    result = runner.invoke(app, ["synth", str(out), "--train", str(N_TRAIN), "--test", str(N_TEST), "--seed",
                                 str(SEED), "--unseen-test-fraction", "0.4", "--train-unseen-fraction", "0.25",
                                 "--workers", "2", "--preview", str(preview)])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output.strip().splitlines()[-1]
    one = sorted(p.name for p in made["out"].iterdir())
    assert sorted(p.name for p in out.iterdir()) == one
    for name in one:
        assert (out / name).read_bytes() == (made["out"] / name).read_bytes(), name
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_file_layout_depends_on_the_split_size_only():
    """Files are the unit of parallel work: a mid-sized split is two files, never more than 10,042 rows a file."""
    assert file_rows(0) == [] and file_rows(90) == [90] and file_rows(3_999) == [3_999]
    assert file_rows(6_000) == [3_000, 3_000]
    assert file_rows(25_001) == [8_334, 8_334, 8_333]
    assert file_rows(50_210) == [10_042] * 5
    assert file_rows(6_000, rows_per_file=6_000) == [6_000]
    assert file_rows(5, rows_per_file=2) == [2, 2, 1]


def test_shaping_self_check_fails_without_shaping():
    spec = select_fonts()[0]
    check_shaping(FontRenderer(spec))
    with pytest.raises(OkkhorError, match="shaping self-check failed.*reph"):
        check_shaping(FontRenderer(spec, shaping=False))


def test_render_grapheme_is_clean_dark_on_white():
    img = render_grapheme("\u0995\u09cd\u09b7\u09cd\u09a3\u09cc")  # ক্ষ্ণৌ
    assert img.shape == (137, 236) and img.dtype == np.uint8
    assert img[0].min() == 255 and img.min() == 0
    assert 0.02 < (img < 128).mean() < 0.5
    assert render_grapheme("\u0995", height=64, width=64).shape == (64, 64)


def test_fonts_unknown_name_lists_the_available_ones():
    names = [f.name for f in select_fonts()]
    with pytest.raises(OkkhorError, match="available: .*" + names[0]):
        select_fonts(["no-such-font"])
    families = {f.family for f in select_fonts()}
    assert {f.family for f in select_fonts(sorted(families)[:1])} == set(sorted(families)[:1])
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "0", "--fonts", "no-such-font"])
    assert_one_line_error(result.exit_code, result.output, "no-such-font", names[0])


def test_bad_arguments_and_existing_dataset_fail_in_one_line(made):
    result = runner.invoke(app, ["synth", str(made["out"]), "--train", "5", "--test", "0"])
    assert_one_line_error(result.exit_code, result.output, "--overwrite")
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "1", "--unseen-test-fraction", "2"])
    assert_one_line_error(result.exit_code, result.output, "unseen-test-fraction")
    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


# ----------------------------------------------------------------------------------------------- held-out fonts

FAMILIES = sorted({f.family for f in select_fonts()})


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A dataset whose test holds out one family for half its images (style font: quick)."""
    out = tmp_path_factory.mktemp("synth") / "held"
    family = "bensen" if "bensen" in FAMILIES else FAMILIES[-1]
    summary = synthesize(out, 40, 20, seed=3, workers=1, progress=False, holdout_fonts=family, holdout_share=0.5,
                         style="font")
    read = lambda name: pd.read_csv(out / name, dtype={"grapheme": str}, keep_default_na=False)  # noqa: E731
    return dict(out=out, family=family, summary=summary, train=read("train.csv"), labels=read("test_labels.csv"))


def test_a_held_out_family_never_draws_train_images(held):
    train, labels, family = held["train"], held["labels"], held["family"]
    assert family not in set(train["font"]) and train["font_seen"].astype(bool).all()
    assert set(train["font"]) <= set(FAMILIES) and len(set(train["font"])) > 1
    assert (labels["font"] == family).sum() == 10 and held["summary"]["test_font_unseen"] == 10
    assert (labels["font_seen"].astype(bool) == (labels["font"] != family)).all()
    assert held["summary"]["holdout_fonts"] == [family]


def test_the_font_column_names_the_family_the_image_was_drawn_in(held):
    """Each listed image equals a re-rendering in one face of its `font` family, and in no face of another."""
    specs = select_fonts()
    imager = Imager(specs)
    paths = image_parquet_files(held["out"], "test")
    _, images = next(iter_image_parquet(paths[0], batch_rows=256))
    for i in (0, 1, 2, 3, 5, 8):
        row = held["labels"].iloc[i]
        drawn = {specs[f].family for f in range(len(specs))
                 if np.array_equal(imager(row["grapheme"], image_rng(3, "test", i), f), images[i])}
        assert drawn == {row["font"]}, (i, drawn, row["font"])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_shipped_family_can_be_held_out(family):
    renderers = self_check_fonts(select_fonts())
    held_faces = [i for i, r in enumerate(renderers) if r.spec.family == family]
    train = plan_draws("train", sample_labels("train", 200, 0.2, 0), 0, renderers, held_faces, style="font")
    test = plan_draws("test", sample_labels("test", 60, 0.2, 0), 0, renderers, held_faces, 1.0, style="font")
    assert {renderers[d.face].spec.family for d in train}.isdisjoint({family})
    assert all(d.font_seen for d in train)
    assert {renderers[d.face].spec.family for d in test} == {family} and not any(d.font_seen for d in test)


def test_holdout_errors_are_one_line():
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "5", "--holdout-fonts", "no-such"])
    assert_one_line_error(result.exit_code, result.output, "no-such", *FAMILIES)
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "5", "--holdout-fonts",
                                 ",".join(FAMILIES)])
    assert_one_line_error(result.exit_code, result.output, "every font family is held out")
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "5", "--holdout-share", "0.5"])
    assert_one_line_error(result.exit_code, result.output, "holdout-fonts")
    result = runner.invoke(app, ["synth", "unused", "--train", "5", "--test", "5", "--style", "pencil"])
    assert_one_line_error(result.exit_code, result.output, "style", "mix")


def test_fonts_dir_adds_good_files_and_rejects_bad_ones_by_name(tmp_path):
    import shutil

    spec = select_fonts()[0]
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(spec.path, fonts / "mine.ttf")
    (fonts / "broken.ttf").write_bytes(b"not a font at all")
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--train", "6", "--test", "2", "--workers", "1",
                                 "--fonts-dir", str(fonts), "--fonts", spec.family, "--style", "font"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "broken.ttf" in warnings[0] and "mine.ttf" not in warnings[0]
    summary = synthesize(tmp_path / "api", 6, 0, workers=1, progress=False, fonts_dir=fonts, fonts=[spec.name,
                         f"{spec.name}-mine"], style="font")
    assert summary["fonts"] == [spec.name, f"{spec.name}-mine"]
    (fonts / "mine.ttf").unlink()
    result = runner.invoke(app, ["synth", str(tmp_path / "none"), "--train", "6", "--test", "0",
                                 "--fonts-dir", str(fonts)])
    assert_one_line_error(result.exit_code, result.output, "broken.ttf", "no usable font")
