"""Foundation: the Kaggle format, schema errors through the CLI, the prepare cache and the crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from okkhor.cli import app
from okkhor.data.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, N_PIXELS, iter_image_parquet, write_image_parquet
from okkhor.data.prepare import crop_square, ink_bbox, load_cache, prepare, preprocess
from helpers import assert_one_line_error

runner = CliRunner()


def blank(n: int) -> np.ndarray:
    return np.full((n, IMAGE_HEIGHT, IMAGE_WIDTH), 250, dtype=np.uint8)


def draw_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with one dark rectangle each; returns images and the rectangles (y0, y1, x0, x1)."""
    rng = np.random.default_rng(seed)
    images = blank(n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        y0 = rng.integers(10, 60); y1 = y0 + rng.integers(10, 60)
        x0 = rng.integers(10, 120); x1 = x0 + rng.integers(10, 100)
        images[i, y0:y1, x0:x1] = 20
        boxes[i] = (y0, y1, x0, x1)
    return images, boxes


_CACHE: dict = {}


def write_dataset(root, n_train=12, n_test=4, labels=None):
    """A tiny Kaggle-format folder. Parquet files with 32,332 columns are slow to write, so they are written
    once per process and copied."""
    import shutil

    key = (n_train, n_test)
    if labels is None and key in _CACHE:
        shutil.copytree(_CACHE[key], root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    images, _ = draw_boxes(n_train)
    ids = [f"Train_{i}" for i in range(n_train)]
    write_image_parquet(root / "train_image_data_0.parquet", ids, images)
    rng = np.random.default_rng(1)
    labels = labels if labels is not None else np.stack(
        [rng.integers(0, 168, n_train), rng.integers(0, 11, n_train), rng.integers(0, 7, n_train)], 1)
    df = pd.DataFrame({"image_id": ids, "grapheme_root": labels[:, 0], "vowel_diacritic": labels[:, 1],
                       "consonant_diacritic": labels[:, 2], "grapheme": "x"})
    df.to_csv(root / "train.csv", index=False)
    test_images, _ = draw_boxes(n_test, seed=5)
    write_image_parquet(root / "test_image_data_0.parquet", [f"Test_{i}" for i in range(n_test)], test_images)
    if labels is None:
        import tempfile

        _CACHE[key] = Path(tempfile.mkdtemp(prefix="okkhor-tiny-")) / "data"
        shutil.copytree(root, _CACHE[key])
    return root


def run_cli(*args):
    result = runner.invoke(app, list(map(str, args)))
    return result.exit_code, result.output



def test_parquet_roundtrip_and_batches(tmp_path):
    images, _ = draw_boxes(10)
    path = tmp_path / "train_image_data_0.parquet"
    write_image_parquet(path, [f"Train_{i}" for i in range(10)], images, row_group_size=4)
    schema = pq.read_schema(path)
    assert schema.names[0] == "image_id" and len(schema.names) == N_PIXELS + 1
    assert all(pa.types.is_uint8(schema.field(n).type) for n in schema.names[1:5])
    got_ids, got = [], []
    for ids, batch in iter_image_parquet(path, batch_rows=3):
        assert len(batch) <= 3
        got_ids += ids
        got.append(batch)
    assert got_ids == [f"Train_{i}" for i in range(10)]
    np.testing.assert_array_equal(np.concatenate(got), images)


def test_ink_bbox_finds_drawn_rectangle():
    images, boxes = draw_boxes(6, seed=3)
    found = ink_bbox(255 - images)
    np.testing.assert_array_equal(found, boxes)


def test_crop_square_is_centred_and_square():
    inv = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    inv[40:60, 50:130] = 200
    sq = crop_square(inv, np.array([40, 60, 50, 130]), margin=0)
    assert sq.shape == (80, 80)
    rows = np.flatnonzero(sq.any(axis=1))
    assert rows[0] == 30 and rows[-1] == 49  # 20 ink rows centred in 80


def test_blank_image_falls_back_to_whole_image():
    box = ink_bbox(255 - blank(1))[0]
    assert tuple(box) == (0, IMAGE_HEIGHT, 0, IMAGE_WIDTH)


def test_preprocess_shape_dtype_and_ink_is_bright():
    images, _ = draw_boxes(4)
    out = preprocess(images, 32, crop=True)
    assert out.shape == (4, 32, 32) and out.dtype == np.uint8
    # cropped: the rectangle fills most of the frame along its long side
    assert (out > 100).mean() > 0.2
    nocrop = preprocess(images, 32, crop=False)
    assert (nocrop > 100).mean() < (out > 100).mean()


def test_prepare_writes_cache_deterministically_and_reuses(tmp_path):
    root = write_dataset(tmp_path / "data")
    first = prepare(root, size=32, show_progress=False)
    assert set(first) == {"train", "test"} and not first["train"]["reused"]
    train, ids = load_cache(root / "cache" / "32", "train")
    assert train.shape == (12, 32, 32) and train.dtype == np.uint8
    assert ids == [f"Train_{i}" for i in range(12)]
    snapshot = np.array(train)
    again = prepare(root, size=32, show_progress=False)
    assert again["train"]["reused"] and again["test"]["reused"]
    other = prepare(root, size=32, out=tmp_path / "other", show_progress=False)
    assert not other["train"]["reused"]
    np.testing.assert_array_equal(np.load(tmp_path / "other" / "train.npy"), snapshot)
    nocrop = prepare(root, size=32, crop=False, show_progress=False)
    assert nocrop["train"]["path"].endswith("32-nocrop/train.npy")


def test_prepare_cli(tmp_path):
    root = write_dataset(tmp_path / "data")
    code, out = run_cli("prepare", root, "--size", 24)
    assert code == 0, out
    assert "train: 12 images" in out and "test: 4 images" in out
    assert np.load(root / "cache" / "24" / "train.npy").shape == (12, 24, 24)


def prepare_after_rewrite(root, table):
    """Replace the train parquet of ROOT with TABLE and run `okkhor prepare` on it: (exit code, output)."""
    pq.write_table(table, root / "train_image_data_0.parquet")
    return run_cli("prepare", root, "--size", 24)


def test_missing_image_id_column(tmp_path):
    root = write_dataset(tmp_path / "data")
    path = root / "train_image_data_0.parquet"
    code, out = prepare_after_rewrite(root, pq.read_table(path).drop(["image_id"]))
    assert_one_line_error(code, out, "train_image_data_0.parquet", "image_id")


def test_wrong_number_of_pixel_columns(tmp_path):
    root = write_dataset(tmp_path / "data")
    path = root / "train_image_data_0.parquet"
    code, out = prepare_after_rewrite(root, pq.read_table(path).drop([str(N_PIXELS - 1)]))
    assert_one_line_error(code, out, "train_image_data_0.parquet", "32332 pixel columns", "32331")
    assert not (root / "cache" / "24" / "train.npy").exists()
    assert not list((root / "cache" / "24").glob("*.tmp*")) if (root / "cache" / "24").exists() else True


def test_non_uint8_values(tmp_path):
    root = write_dataset(tmp_path / "data")
    path = root / "train_image_data_0.parquet"
    table = pq.read_table(path)
    col = pa.array(np.full(12, 300, dtype=np.int64))
    code, out = prepare_after_rewrite(root, table.set_column(5, "4", col))
    assert_one_line_error(code, out, "train_image_data_0.parquet", "uint8")
    code, out = prepare_after_rewrite(root, table.set_column(5, "4", pa.array(np.full(12, 0.5))))
    assert_one_line_error(code, out, "train_image_data_0.parquet", "uint8")


def test_truncated_parquet(tmp_path):
    root = write_dataset(tmp_path / "data")
    path = root / "train_image_data_0.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out = run_cli("prepare", root, "--size", 24)
    assert_one_line_error(code, out, "train_image_data_0.parquet")
    assert not (root / "cache" / "24" / "train.npy").exists()


def test_missing_data_dir_and_files(tmp_path):
    code, out = run_cli("prepare", tmp_path / "nope")
    assert_one_line_error(code, out, "nope", "not found")
    (tmp_path / "empty").mkdir()
    code, out = run_cli("prepare", tmp_path / "empty")
    assert_one_line_error(code, out, "train_image_data_")


def test_csv_without_label_columns(tmp_path):
    root = write_dataset(tmp_path / "data")
    pd.read_csv(root / "train.csv").drop(columns=["vowel_diacritic"]).to_csv(root / "train.csv", index=False)
    code, out = run_cli("split", root, "--folds", 3)
    assert_one_line_error(code, out, "train.csv", "vowel_diacritic")


def test_labels_outside_class_map(tmp_path):
    labels = np.zeros((12, 3), dtype=np.int64)
    labels[4, 1] = 11
    root = write_dataset(tmp_path / "data", labels=labels)
    code, out = run_cli("split", root, "--folds", 3)
    assert_one_line_error(code, out, "train.csv", "vowel_diacritic", "11")
