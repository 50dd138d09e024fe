"""`okkhor import`: an ImageFolder of both polarities and odd sizes becomes competition files that prepare and
train accept; unreadable images and unmapped folders cost one line each."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import _class_map, draw_images
from okkhor.cli import app
from okkhor.data.prepare import load_cache, prepare
from okkhor.errors import OkkhorError
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, ImageFiles, image_parquet_files
from okkhor.sources.imagefolder import (
    IMAGE_EXTENSIONS,
    background_level,
    list_image_folder,
    load_image,
    read_label_map,
    to_page,
)

CLASSES = (4, 3, 2)
# folder -> its label triple; every class of every target occurs
FOLDERS = {"ka": (0, 0, 0), "kha": (1, 1, 1), "ga": (2, 2, 0), "gha": (3, 0, 1), "nga": (0, 1, 0), "ca": (1, 2, 1)}
PER_FOLDER = 12


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """IMAGE_DIR with six mapped class folders (PNG, half of each light-on-dark, half at 0.5x and half at 1.5x
    size, one JPEG), an unmapped folder, an unreadable image and a non-image file; MAP.csv; the class map."""
    root = tmp_path_factory.mktemp("imagefolder")
    names, _ = _class_map(root, CLASSES)
    images = root / "images"
    rng = np.random.default_rng(0)
    originals = {}
    for name, triple in FOLDERS.items():
        (images / name).mkdir(parents=True)
        drawn = draw_images(np.array([triple] * PER_FOLDER), CLASSES, rng)
        for i, img in enumerate(drawn):
            scale = 0.5 if i % 2 else 1.5
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            img = 255 - img if i % 4 < 2 else img    # light on dark for half of them
            cv2.imwrite(str(images / name / f"{i:03d}.png"), img)
            originals[(name, i)] = img
    cv2.imwrite(str(images / "ka" / "zz-photo.jpg"), 255 - originals[("ka", 2)])  # ka/002.png, light on dark
    (images / "ka" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "ka" / "notes.txt").write_text("not an image")
    (images / "unmapped").mkdir()
    cv2.imwrite(str(images / "unmapped" / "0.png"), originals[("ka", 1)])
    rows = [{"folder": n, **dict(zip(names, t, strict=False)), "grapheme": n} for n, t in FOLDERS.items()]
    pd.DataFrame(rows).to_csv(root / "map.csv", index=False)
    return root, images, originals


def test_listing_follows_torchvision_image_folder(folder):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    _, images, _ = folder
    assert set(IMAGE_EXTENSIONS) == set(IMG_EXTENSIONS)
    classes, class_to_idx = find_classes(str(images))
    mapped = [c for c in classes if c != "unmapped"]
    ours = list_image_folder(images, mapped)
    assert ours[0] == classes
    expected = make_dataset(str(images), {c: i for i, c in enumerate(mapped)}, extensions=IMG_EXTENSIONS)
    assert ours[1] == expected and len(expected) == len(FOLDERS) * PER_FOLDER + 2   # the JPEG and the broken PNG


def test_polarity_and_scaling_onto_the_page():
    dark_on_light = np.full((50, 30), 240, np.uint8)
    dark_on_light[10:40, 10:20] = 20
    page, inverted = to_page(dark_on_light)
    assert page.shape == (IMAGE_HEIGHT, IMAGE_WIDTH) and not inverted
    page2, inverted2 = to_page(255 - dark_on_light)
    assert inverted2 and np.abs(page.astype(int) - page2).max() <= 1
    assert background_level(page) == 240 and page.min() <= 25
    ink = np.argwhere(page < 128)   # a 50x30 image fits by height: 137 - 2*8 rows, the ink 3/5 of them
    assert abs((ink[:, 0].max() - ink[:, 0].min() + 1) - 121 * 30 / 50) <= 2
    assert abs(ink[:, 1].mean() - IMAGE_WIDTH / 2) < 2   # centred


def test_load_image_alpha_and_16_bit(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[5:15, 5:15] = (0, 0, 0, 255)           # opaque black ink on a transparent background
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    img = load_image(tmp_path / "a.png")
    assert img.shape == (20, 20) and img[0, 0] == 255 and img[10, 10] == 0
    cv2.imwrite(str(tmp_path / "b.png"), np.full((8, 8), 40000, np.uint16))
    assert load_image(tmp_path / "b.png").max() == 40000 >> 8
    (tmp_path / "c.png").write_bytes(b"junk")
    assert load_image(tmp_path / "c.png") is None and load_image(tmp_path / "missing.png") is None


def test_import_then_prepare_and_train(folder, tmp_path):
    root, images, originals = folder
    out = tmp_path / "data"
    code, output = cli("import", images, out, "--labels", root / "map.csv", "--class-map", root / "class_map.csv",
                       "--no-progress")
    assert code == 0, output
    lines = output.strip().splitlines()
    skipped = [line for line in lines if line.startswith("skipped: ")]
    assert len(skipped) == 2, output
    assert any("zz-broken.png: cannot read image" in line for line in skipped)
    assert any("unmapped: folder not in" in line for line in skipped)
    n = len(FOLDERS) * PER_FOLDER + 1   # and the JPEG
    assert lines[-1].startswith(f"import: {n} train images from {len(FOLDERS)} folders (inverted {n // 2 + 1}, "
                                "unreadable 1, folders not in the map 1), targets grapheme_root, vowel_diacritic, "
                                "consonant_diacritic, 1 parquet file(s): ")

    train = pd.read_csv(out / "train.csv")
    assert list(train.columns) == ["image_id", "grapheme_root", "vowel_diacritic", "consonant_diacritic",
                                   "grapheme"]
    assert len(train) == n and train["image_id"].tolist() == [f"Train_{i}" for i in range(n)]
    for _, row in train.iterrows():
        assert tuple(row[["grapheme_root", "vowel_diacritic", "consonant_diacritic"]]) == FOLDERS[row["grapheme"]]
    assert pd.read_csv(out / "class_map.csv").equals(pd.read_csv(root / "class_map.csv"))
    ids, pages = zip(*[(i, p) for b_ids, b in ImageFiles(image_parquet_files(out, "train")).batches()
                       for i, p in zip(b_ids, b, strict=False)], strict=False)
    pages = np.stack(pages)
    assert list(ids) == train["image_id"].tolist() and pages.shape == (n, IMAGE_HEIGHT, IMAGE_WIDTH)
    # every page is dark ink on light paper, whatever the file's polarity
    assert all(background_level(p) > 200 for p in pages) and (pages.reshape(n, -1).min(axis=1) < 60).all()
    # the light-on-dark JPEG of ka/002.png lands (up to JPEG loss) on the page of ka/002.png
    ka = train.index[train["grapheme"] == "ka"].tolist()
    png, jpeg = pages[ka[2]].astype(int), pages[ka[-1]].astype(int)
    assert np.abs(png - jpeg).mean() < 3 and np.abs(png - pages[ka[3]]).mean() > 3 * np.abs(png - jpeg).mean()

    # prepare and a tiny train accept the files, and the model learns the labels the folders gave
    prepare(out, size=32, show_progress=False)
    cache, cache_ids = load_cache(out / "cache" / "32", "train")
    assert cache.shape == (n, 32, 32) and list(cache_ids) == list(ids)
    run = tmp_path / "run"
    code, output = cli("train", "--data", out, "--out", run, "--model", "test_efficientnet", "--image-size", "32",
                       "--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--set", "data.folds=3",
                       "--set", "data.workers=0", "--set", "eval.train_clean_size=32", "--no-progress")
    assert code == 0, output
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"train_clean", "valid"} <= set(metrics["split"]) and metrics["epoch"].max() == 1
    assert (run / "checkpoints" / "best.pt").is_file()


def test_test_split_beside_train_and_rerun(folder, tmp_path):
    root, images, _ = folder
    out = tmp_path / "data"
    args = ["--labels", root / "map.csv", "--class-map", root / "class_map.csv", "--no-progress"]
    assert cli("import", images, out, *args)[0] == 0
    code, output = cli("import", images, out, "--split", "test", *args)
    assert code == 0, output
    assert (out / "train.csv").is_file() and image_parquet_files(out, "train")   # train kept
    labels = pd.read_csv(out / "test_labels.csv")
    test = pd.read_csv(out / "test.csv")
    assert len(test) == 3 * len(labels) and test["row_id"].iloc[0] == "Test_0_consonant_diacritic"
    assert sorted(test["component"].unique()) == ["consonant_diacritic", "grapheme_root", "vowel_diacritic"]
    assert pd.read_csv(out / "sample_submission.csv")["row_id"].tolist() == test["row_id"].tolist()
    code, output = cli("import", images, out, "--split", "test", *args)
    assert code == 2 and "already holds test files" in output and "--overwrite" in output
    assert cli("import", images, out, "--split", "test", "--overwrite", *args)[0] == 0
    # the built-in Bengali class map is not the one the train split was written with
    code, output = cli("import", images, out, "--split", "test", "--overwrite", "--labels", root / "map.csv",
                       "--no-progress")
    assert code == 2 and "class_map.csv: differs from the class map" in output


def test_label_map_errors_name_the_file_and_column(folder, tmp_path):
    root, _, _ = folder
    bad = tmp_path / "bad.csv"
    cases = [
        ("name,grapheme_root\nka,1\n", "missing column folder"),
        ("folder,root\nka,1\n", "column(s) root are not a target of the class map; targets: grapheme_root"),
        ("folder,grapheme_root\nka,4\n", "column grapheme_root has label 4 outside the class map 0..3 (row 2)"),
        ("folder,grapheme_root\nka,1\nka,2\n", "folder 'ka' is mapped twice"),
        ("folder,grapheme\nka,x\n", "no column names a target"),
    ]
    for text, needle in cases:
        bad.write_text(text)
        with pytest.raises(OkkhorError, match=None) as err:
            read_label_map(bad, root / "class_map.csv")
        assert str(bad) in str(err.value) and needle in str(err.value), str(err.value)
    bad.write_text("folder,vowel_diacritic\n007,2\n")     # one target of the map; folder names stay text
    labels, targets, _ = read_label_map(bad, root / "class_map.csv")
    assert targets.names == ("vowel_diacritic",) and targets.num_classes == (3,) and list(labels) == ["007"]
    code, output = cli("import", tmp_path / "nope", tmp_path / "out", "--labels", bad)
    assert code == 2 and output.strip() == f"okkhor: error: {tmp_path / 'nope'}: not a folder"


def test_import_needs_no_synth_extra(folder, tmp_path, monkeypatch):
    """Without HarfBuzz and FreeType (no okkhor[synth]) okkhor import still works."""
    root, images, _ = folder
    for name in ("uharfbuzz", "freetype"):
        monkeypatch.setitem(sys.modules, name, None)   # import fails, as when the package is not installed
    for name in ("okkhor.sources.synth.shaping", "okkhor.sources.synth.writer", "okkhor.sources.imagefolder"):
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    code, output = cli("import", images, tmp_path / "data", "--labels", root / "map.csv", "--class-map",
                       root / "class_map.csv", "--no-progress")
    assert code == 0, output
    assert "okkhor.sources.synth.shaping" not in sys.modules
