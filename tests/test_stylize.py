"""`okkhor stylize`: fit a tiny CycleGAN between two tiny data dirs, apply it, and check the copy, determinism, the
cycle loss falling, and one-line errors for bad inputs."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import assert_one_line_error, cli, draw_images, make_tiny_kaggle
from okkhor.data.prepare import load_cache
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, ImageFiles, image_parquet_files, write_image_parquet
from okkhor.sources.imagefolder import background_level, to_page
from okkhor.sources.stylize.apply import near_ink, stylize_crops
from okkhor.sources.stylize.fit import ImagePool, fit_stylizer, torch_threads
from okkhor.sources.stylize.nets import Discriminator, Generator
from okkhor.sources.stylize.stylizer import StylizeOptions, load_stylizer

SIZE = 16
FIT = ["--size", SIZE, "--steps", 4, "--batch", 4, "--no-progress"]


def _read(files):
    """(image ids, images [n, 137, 236]) of parquet files, in order."""
    ids, images = [], []
    for chunk_ids, chunk in ImageFiles(files).read():
        ids += chunk_ids
        images.append(chunk.copy())
    return ids, np.concatenate(images)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(synthetic dir: 24 train images in two files and 4 test images; "real" dir: 24 other drawings whose ink
    is grown by 2 px on each side, strokes about twice as thick)."""
    root = tmp_path_factory.mktemp("stylize")
    synth = make_tiny_kaggle(root / "synth", n_train=24, n_test=4, seed=0, train_files=2)
    real = root / "real"
    real.mkdir()
    labels = np.stack([np.arange(24) % 4, np.arange(24) % 3, np.arange(24) % 2], 1)
    drawn = draw_images(labels, (4, 3, 2), np.random.default_rng(1))
    thick = np.stack([cv2.erode(img, np.ones((5, 5), np.uint8)) for img in drawn])  # dark ink grows
    write_image_parquet(real / "train_image_data_0.parquet", [f"Train_{i}" for i in range(24)], thick)
    return synth.root, real, synth


@pytest.fixture(scope="module")
def fitted(dirs, tmp_path_factory):
    synth, real, _ = dirs
    out = tmp_path_factory.mktemp("stylizer") / "s.pt"
    code, output = cli("stylize", "fit", "--real", real, "--synth", synth, "--out", out, *FIT)
    assert code == 0, output
    assert "stylize fit: 4 steps of 4 on 24 synthetic and 24 real images at 16 px" in output
    return out


@pytest.fixture(scope="module")
def applied(dirs, fitted, tmp_path_factory):
    out = tmp_path_factory.mktemp("applied") / "styled"
    code, output = cli("stylize", "apply", fitted, "--synth", dirs[0], "--out", out, "--batch", 7, "--no-progress")
    assert code == 0, output
    assert "24 train, 4 test images at 16 px (ink kept within 1 px of the synthetic ink), 5 CSV files" in output
    return out


def test_apply_writes_a_stylised_copy_in_the_competition_format(dirs, fitted, applied):
    synth, _, tiny = dirs
    out = applied
    names = sorted(p.name for p in out.iterdir())
    assert names == ["class_map.csv", "sample_submission.csv", "test.csv", "test_image_data_0.parquet",
                     "test_labels.csv", "train.csv", "train_image_data_0.parquet", "train_image_data_1.parquet"]
    for name in ("class_map.csv", "train.csv", "test.csv", "test_labels.csv", "sample_submission.csv"):
        assert (out / name).read_bytes() == (synth / name).read_bytes()
    _, nets, _ = load_stylizer(fitted)
    for split in ("train", "test"):
        # independently: the generator on the input's prepared crops, then import's placement on the page
        crops, cached_ids = load_cache(synth / "cache" / str(SIZE), split)
        with torch.no_grad(), torch_threads(1):
            styled = nets["synth_to_real"](torch.tensor(crops, dtype=torch.float32)[:, None] / 127.5 - 1)
        styled = ((styled[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        styled = np.where(near_ink(crops, SIZE // 16), styled, 0)   # --reach's default
        expected = np.stack([to_page(255 - crop)[0] for crop in styled])
        files = image_parquet_files(out, split)
        assert [p.name for p in files] == [p.name for p in image_parquet_files(synth, split)]
        given = np.array_split(tiny.train_ids, 2) if split == "train" else [tiny.test_ids]
        parts = [_read([path]) for path in files]
        assert [part[0] for part in parts] == [list(i) for i in given]   # each file holds its input file's images
        images = np.concatenate([part[1] for part in parts])
        assert sum((part[0] for part in parts), []) == cached_ids
        assert images.dtype == np.uint8 and images.shape == (len(cached_ids), IMAGE_HEIGHT, IMAGE_WIDTH)
        assert np.abs(images.astype(int) - expected).max() <= 1
        assert all(background_level(page) > 128 for page in images)  # dark ink on a light page
    code, output = cli("prepare", out, "--size", SIZE)
    assert code == 0, output
    styled, styled_ids = load_cache(out / "cache" / str(SIZE), "train")
    crops, crop_ids = load_cache(synth / "cache" / str(SIZE), "train")
    assert styled_ids == crop_ids and styled.shape == crops.shape
    assert (styled != crops).mean() > 0.5   # the images changed


def test_the_same_seed_gives_the_same_bytes_and_overwrite_replaces_a_data_dir(dirs, fitted, applied, tmp_path):
    synth, real, _ = dirs
    again, other = tmp_path / "again.pt", tmp_path / "other.pt"
    assert cli("stylize", "fit", "--real", real, "--synth", synth, "--out", again, *FIT)[0] == 0
    assert again.read_bytes() == fitted.read_bytes()
    assert cli("stylize", "fit", "--real", real, "--synth", synth, "--out", other, *FIT, "--seed", 1)[0] == 0
    assert other.read_bytes() != fitted.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"image_id": ["x"]}).to_csv(out / "train.csv", index=False)
    (out / "train_image_data_5.parquet").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    code, output = cli("stylize", "apply", fitted, "--synth", synth, "--out", out, "--no-progress")
    assert_one_line_error(code, output, "already holds a data dir (train.csv)", "--overwrite")
    code, output = cli("stylize", "apply", fitted, "--synth", synth, "--out", out, "--no-progress", "--overwrite")
    assert code == 0, output
    assert not (out / "train_image_data_5.parquet").exists() and (out / "notes.txt").read_text() == "mine"
    for path in applied.iterdir():
        if path.is_file():
            assert path.read_bytes() == (out / path.name).read_bytes(), path.name


def test_a_short_fit_lowers_the_cycle_loss(dirs, tmp_path):
    synth, real, _ = dirs
    opts = StylizeOptions(size=SIZE, steps=30, batch=8, lr=2e-3, identity_weight=0.0, pool=0)
    summary = fit_stylizer(real, synth, tmp_path / "s.pt", opts, show_progress=False, threads=1)
    _, _, state = load_stylizer(tmp_path / "s.pt")
    cycle = state["history"]["cycle"]
    assert len(cycle) == 30 and state["history"]["identity"] == [0.0] * 30
    assert np.mean(cycle[-5:]) < 0.35 * np.mean(cycle[:5]), cycle   # falls by 65% or more (measured: ~80%)
    assert summary["last"]["cycle"] == pytest.approx(np.mean(cycle[-3:]))


def test_the_file_holds_options_weights_and_plain_values(fitted):
    opts, nets, state = load_stylizer(fitted)
    assert opts == StylizeOptions(size=SIZE, steps=4, batch=4, seed=0)
    assert set(state) == {"format", "version", "options", "nets", "history", "data"}
    assert state["data"]["real_images"] == 24 and state["data"]["synth_images"] == 24
    assert all(not m.training for m in nets.values())
    x = torch.zeros(2, 1, SIZE, SIZE)
    assert nets["synth_to_real"](x).shape == (2, 1, SIZE, SIZE)
    assert nets["disc_real"](x).shape == (2, 1, SIZE // 8, SIZE // 8)


def test_nets_and_pool_shapes():
    g, d = Generator(8, 2), Discriminator(8)
    x = torch.rand(3, 1, 32, 48) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and float(y.detach().abs().max()) <= 1.0
    assert d(x).shape == (3, 1, 4, 6)
    pool = ImagePool(2, torch.Generator().manual_seed(0))
    first = pool(torch.ones(2, 1, 4, 4))
    assert torch.equal(first, torch.ones(2, 1, 4, 4)) and len(pool.images) == 2
    mixed = pool(torch.zeros(64, 1, 4, 4))   # full: each new image is swapped for a stored one with p = 1/2
    assert int(mixed.sum()) // 16 in (1, 2)   # the first swap returns a stored one; there are but two of them
    assert len(pool.images) == 2 and int(torch.stack(pool.images).sum()) == 0


def test_apply_removes_marks_beyond_reach_of_the_synthetic_ink():
    crops = np.full((2, 16, 16), 40, np.uint8)       # shaded paper (bright ink on black, as prepared)
    crops[0, 7:9, 7:9] = 200                         # grey ink: a 2x2 block
    crops[1, 0:3, 0:16] = 220                        # a bar along the top
    def everywhere(x):                               # a generator that inks every pixel
        return torch.ones_like(x)
    assert (stylize_crops(everywhere, crops) == 255).all()
    block = stylize_crops(everywhere, crops, reach=0)
    assert (block[0] == 255).sum() == 4 and (block[0, 7:9, 7:9] == 255).all()
    assert (block[1, :3] == 255).all() and (block[1, 3:] == 0).all()
    grown = stylize_crops(everywhere, crops, reach=2)
    yy, xx = np.mgrid[:16, :16]
    distance = np.hypot(np.clip(yy, 7, 8) - yy, np.clip(xx, 7, 8) - xx)   # from the block
    assert (grown[0][distance <= 2] == 255).all() and (grown[0][distance > 2.5] == 0).all()
    assert (grown[1, :5] == 255).all() and (grown[1, 5:] == 0).all()


class _Runs:
    """Pickles to a call of open(path, "w"): loading it with code allowed would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_bad_stylizer_files_are_one_line(dirs, fitted, tmp_path):
    synth = dirs[0]
    out = tmp_path / "out"
    code, output = cli("stylize", "apply", tmp_path / "missing.pt", "--synth", synth, "--out", out)
    assert_one_line_error(code, output, "missing.pt", "stylizer not found")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {}}, foreign)
    code, output = cli("stylize", "apply", foreign, "--synth", synth, "--out", out)
    assert_one_line_error(code, output, "foreign.pt", "not an okkhor stylizer")
    evil, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"format": "okkhor-stylizer", "x": _Runs(marker)}, evil)
    code, output = cli("stylize", "apply", evil, "--synth", synth, "--out", out)
    assert_one_line_error(code, output, "evil.pt", "refused")
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(fitted.read_bytes()[:2000])
    code, output = cli("stylize", "apply", truncated, "--synth", synth, "--out", out)
    assert_one_line_error(code, output, "truncated.pt", "not a readable stylizer")
    state = torch.load(fitted, weights_only=True)
    state["options"]["channels"] = 8
    torch.save(state, tmp_path / "mismatch.pt")
    code, output = cli("stylize", "apply", tmp_path / "mismatch.pt", "--synth", synth, "--out", out)
    assert_one_line_error(code, output, "mismatch.pt", "synth_to_real do not fit")
    assert not out.exists()


def test_bad_dirs_and_options_are_one_line(dirs, fitted, tmp_path):
    synth, real, _ = dirs
    code, output = cli("stylize", "fit", "--real", tmp_path / "nowhere", "--synth", synth, "--out", tmp_path / "s.pt",
                       *FIT)
    assert_one_line_error(code, output, "--real", "nowhere", "data directory not found")
    code, output = cli("stylize", "fit", "--synth", synth, "--out", tmp_path / "s.pt", *FIT)
    assert_one_line_error(code, output, "fit needs --real")
    code, output = cli("stylize", "fit", "--real", real, "--synth", synth, "--out", tmp_path / "s.pt", "--size", 20)
    assert_one_line_error(code, output, "--size 20", "multiple of 8")
    code, output = cli("stylize", "fit", "--real", real, "--synth", synth, "--out", tmp_path, *FIT)
    assert_one_line_error(code, output, "--out", "is a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = cli("stylize", "apply", fitted, "--synth", empty, "--out", tmp_path / "o")
    assert_one_line_error(code, output, "--synth", "no train_image_data_*.parquet")
    code, output = cli("stylize", "apply", fitted, "--synth", synth, "--out", synth)
    assert_one_line_error(code, output, "is the --synth data dir")
    code, output = cli("stylize", "apply", "--synth", synth, "--out", tmp_path / "o")
    assert_one_line_error(code, output, "apply needs the STYLIZER.pt argument")
    code, output = cli("stylize", "apply", fitted, "--synth", synth, "--out", tmp_path / "o", "--reach", -2)
    assert_one_line_error(code, output, "--reach -2", "at least 0")
    code, output = cli("stylize", "fit", "--real", real, "--synth", synth, "--out", tmp_path / "s.pt", "--threads", 0)
    assert_one_line_error(code, output, "--threads 0", "at least 1")
