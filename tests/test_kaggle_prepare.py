"""Foundation: the Kaggle format, schema errors through the CLI, the prepare cache and the crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from okkhor.cli import app
from okkhor.data.prepare import crop_to_shape, ink_bbox, load_cache, prepare, preprocess
from okkhor.io import kaggle
from okkhor.io.kaggle import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    N_PIXELS,
    ImageParquetWriter,
    iter_image_parquet,
    pixel_columns,
    plan_chunks,
    write_image_parquet,
)

runner = CliRunner()


def blank(n: int) -> np.ndarray:
    return np.full((n, IMAGE_HEIGHT, IMAGE_WIDTH), 250, dtype=np.uint8)


def draw_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with one dark rectangle each; returns images and the rectangles (y0, y1, x0, x1)."""
    rng = np.random.default_rng(seed)
    images = blank(n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        y0 = rng.integers(10, 60)
        y1 = y0 + rng.integers(10, 60)
        x0 = rng.integers(10, 120)
        x1 = x0 + rng.integers(10, 100)
        images[i, y0:y1, x0:x1] = 20
        boxes[i] = (y0, y1, x0, x1)
    return images, boxes


_CACHE: dict = {}


LAYOUTS = {"row-groups": 6, "single": None}  # rows per row group of the tiny files; None: one row group


def write_dataset(root, n_train=12, n_test=4, labels=None, layout="row-groups"):
    """A tiny Kaggle-format folder in one of the LAYOUTS. Parquet files with 32,332 columns are slow to write, so
    they are written once per process and copied."""
    import shutil

    key = (n_train, n_test, layout)
    if labels is None and key in _CACHE:
        shutil.copytree(_CACHE[key], root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    images, _ = draw_boxes(n_train)
    ids = [f"Train_{i}" for i in range(n_train)]
    write_image_parquet(root / "train_image_data_0.parquet", ids, images, row_group_rows=LAYOUTS[layout])
    rng = np.random.default_rng(1)
    labels = labels if labels is not None else np.stack(
        [rng.integers(0, 168, n_train), rng.integers(0, 11, n_train), rng.integers(0, 7, n_train)], 1)
    df = pd.DataFrame({"image_id": ids, "grapheme_root": labels[:, 0], "vowel_diacritic": labels[:, 1],
                       "consonant_diacritic": labels[:, 2], "grapheme": "x"})
    df.to_csv(root / "train.csv", index=False)
    test_images, _ = draw_boxes(n_test, seed=5)
    write_image_parquet(root / "test_image_data_0.parquet", [f"Test_{i}" for i in range(n_test)], test_images,
                        row_group_rows=LAYOUTS[layout])
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
    write_image_parquet(path, [f"Train_{i}" for i in range(10)], images, row_group_rows=4)
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
    sq = crop_to_shape(inv, np.array([40, 60, 50, 130]), margin=0)
    assert sq.shape == (80, 80)
    rows = np.flatnonzero(sq.any(axis=1))
    assert rows[0] == 30 and rows[-1] == 49  # 20 ink rows centred in 80


def test_crop_to_shape_pads_to_the_output_aspect_ratio():
    inv = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    inv[40:100, 50:90] = 200   # 60 high, 40 wide
    wide = crop_to_shape(inv, np.array([40, 100, 50, 90]), (64, 112), margin=0)
    assert wide.shape == (60, 105)  # the height fits; the width pads out to 112/64 of it
    cols = np.flatnonzero(wide.any(axis=0))
    assert cols[0] == 32 and cols[-1] == 71  # 40 ink columns centred in 105
    flat = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    flat[60:70, 20:220] = 200  # 10 high, 200 wide: the width fits, the height pads to 64/112 of it
    assert crop_to_shape(flat, np.array([60, 70, 20, 220]), (64, 112), margin=0).shape == (114, 200)


def test_preprocess_non_square_keeps_the_ink_undistorted():
    images, _ = draw_boxes(3, seed=5)
    out = preprocess(images, (64, 112), crop=True)
    assert out.shape == (3, 64, 112) and out.dtype == np.uint8
    assert preprocess(images, "64x112", crop=False).shape == (3, 64, 112)
    assert np.array_equal(preprocess(images, (48, 48)), preprocess(images, 48))  # [S, S] is the square S
    # a square ink blob stays square in a wide frame: its ink box's height and width agree to a pixel or two
    inv = np.zeros((1, IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    inv[0, 30:90, 80:140] = 255
    blob = preprocess(255 - inv, (64, 112))[0] > 127
    rows, cols = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
    assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 2 and rows[-1] - rows[0] >= 40


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


_TABLES: dict = {}


def train_table(root, layout):
    """The train parquet of a `write_dataset` folder as one table (read once per layout: 32,332 columns are slow)."""
    if layout not in _TABLES:
        _TABLES[layout] = pq.read_table(root / "train_image_data_0.parquet")
    return _TABLES[layout]


def prepare_after_rewrite(root, table, layout="row-groups"):
    """Replace the train parquet of ROOT with TABLE in LAYOUT and run `okkhor prepare` on it: (exit code, output)."""
    path = root / "train_image_data_0.parquet"
    pq.write_table(table, path, row_group_size=LAYOUTS[layout] or len(table))
    assert pq.ParquetFile(path).metadata.num_row_groups == (1 if layout == "single" else 2)
    return run_cli("prepare", root, "--size", 24)


layouts = pytest.mark.parametrize("layout", list(LAYOUTS))


@layouts
def test_missing_image_id_column(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    code, out = prepare_after_rewrite(root, train_table(root, layout).drop(["image_id"]), layout)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "image_id")


@layouts
def test_wrong_number_of_pixel_columns(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    code, out = prepare_after_rewrite(root, train_table(root, layout).drop([str(N_PIXELS - 1)]), layout)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "32332 pixel columns", "32331")
    assert not (root / "cache" / "24" / "train.npy").exists()
    assert not list((root / "cache" / "24").glob("*.tmp*")) if (root / "cache" / "24").exists() else True


@layouts
def test_non_uint8_values(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    table = train_table(root, layout)
    values = np.full(12, 7, dtype=np.int64)
    values[11] = 300  # in the last row group of the row-groups layout
    code, out = prepare_after_rewrite(root, table.set_column(5, "4", pa.array(values)), layout)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "column '4'", "outside 0..255", "uint8")
    assert not (root / "cache" / "24" / "train.npy").exists()
    code, out = prepare_after_rewrite(root, table.set_column(5, "4", pa.array(np.full(12, 0.5))), layout)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "column '4'", "uint8")


@layouts
def test_int_pixels_in_range_read_as_uint8(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    path = root / "train_image_data_0.parquet"
    table = train_table(root, layout)
    expected = np.asarray(table.drop_columns(["image_id"]).to_tensor(row_major=True)).reshape(-1, IMAGE_HEIGHT,
                                                                                              IMAGE_WIDTH)
    wide = table.set_column(5, "4", table.column("4").cast(pa.int64()))
    pq.write_table(wide, path, row_group_size=LAYOUTS[layout] or len(table))
    np.testing.assert_array_equal(np.concatenate([b for _, b in iter_image_parquet(path)]), expected)


@layouts
def test_missing_pixel_values(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    table = train_table(root, layout)
    values = pa.array([7] * 11 + [None], pa.uint8())
    code, out = prepare_after_rewrite(root, table.set_column(101, "100", values), layout)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "column '100'", "missing values")
    assert not (root / "cache" / "24" / "train.npy").exists()


@layouts
def test_truncated_parquet(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    path = root / "train_image_data_0.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out = run_cli("prepare", root, "--size", 24)
    assert_one_line_error(code, out, "train_image_data_0.parquet")
    assert not (root / "cache" / "24" / "train.npy").exists()


@layouts
def test_corrupt_pages_fail_while_reading(tmp_path, layout):
    root = write_dataset(tmp_path / "data", layout=layout)
    path = root / "train_image_data_0.parquet"
    first_group = pq.ParquetFile(path).metadata.row_group(0)
    start, stop = first_group.column(1000).data_page_offset, first_group.column(20000).data_page_offset
    data = bytearray(path.read_bytes())
    data[start:stop] = bytes(stop - start)  # pages of columns 999..19999 zeroed, the footer intact
    path.write_bytes(bytes(data))
    code, out = run_cli("prepare", root, "--size", 24)
    assert_one_line_error(code, out, "train_image_data_0.parquet", "cannot read")
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


# ------------------------------------------------------------------------------------ layouts and the reader

def test_writer_layouts(tmp_path):
    """row_group_rows: an int = row groups of exactly that size across calls, None = one dictionary-encoded group."""
    images, _ = draw_boxes(8, seed=2)
    ids = [f"Train_{i}" for i in range(8)]
    sizes = {}
    for rows in (5, None):
        path = tmp_path / f"{rows}.parquet"
        with ImageParquetWriter(path, rows) as writer:
            columns = pixel_columns(images[:3])
            writer.write_columns(ids[:3], columns)
            columns[:] = 0  # the caller reuses its buffer: what the writer kept must not change
            writer.write(ids[3:6], images[3:6])
            writer.write(ids[6:], images[6:])
        meta = pq.ParquetFile(path).metadata
        sizes[rows] = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert "RLE_DICTIONARY" in meta.row_group(0).column(1).encodings
        got = list(iter_image_parquet(path))
        assert [i for batch_ids, _ in got for i in batch_ids] == ids
        np.testing.assert_array_equal(np.concatenate([b for _, b in got]), images)
    assert sizes == {5: [5, 3], None: [8]}
    with pytest.raises(ValueError):
        ImageParquetWriter(tmp_path / "x.parquet", 0)


def test_plan_chunks():
    one = plan_chunks([50210], 18680)  # the competition's layout: three passes over one row group
    assert [(c.row_groups, c.start, c.stop, c.decoded_rows) for c in one] == [
        ((0,), 0, 16736, 50210), ((0,), 16736, 33473, 50210), ((0,), 33473, 50210, 50210)]
    packed = plan_chunks([4096] * 12 + [1058], 18680)  # small row groups share a chunk
    assert [c.row_groups for c in packed] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11, 12)]
    assert all(c.start == 0 and c.stop == c.decoded_rows for c in packed)
    mixed = plan_chunks([3, 10, 2, 0, 2], 4, file=1)
    assert [(c.file, c.row_groups, c.start, c.stop) for c in mixed] == [
        (1, (0,), 0, 3), (1, (1,), 0, 3), (1, (1,), 3, 6), (1, (1,), 6, 10), (1, (2, 4), 0, 4)]


def cache_bytes(root, size=32, **kw):
    out = prepare(root, size=size, out=root / "cache-test", show_progress=False, **kw)
    arrays = {split: np.load(info["path"]) for split, info in out.items()}
    ids = {split: (root / "cache-test" / f"{split}_ids.csv").read_text() for split in out}
    return arrays, ids


@pytest.mark.parametrize("buffer_rows", [None, 4])
def test_both_layouts_give_identical_caches(tmp_path, monkeypatch, buffer_rows):
    """The same images as row groups of 6 or as one row group; with buffer_rows=4 every file takes several passes."""
    if buffer_rows:
        monkeypatch.setattr(kaggle, "READ_BUFFER_BYTES", buffer_rows * N_PIXELS)
    caches = [cache_bytes(write_dataset(tmp_path / layout, layout=layout)) for layout in LAYOUTS]
    (arrays, ids), (other_arrays, other_ids) = caches
    assert ids == other_ids and set(arrays) == {"train", "test"}
    for split in arrays:
        np.testing.assert_array_equal(arrays[split], other_arrays[split])
    images, _ = draw_boxes(12)
    np.testing.assert_array_equal(arrays["train"], preprocess(images, 32))  # and both are what preprocess makes


def test_single_row_group_of_thousands_takes_the_column_block_path(tmp_path, monkeypatch):
    """2,000 rows in one row group, read in 4 passes of 500 rows, a few hundred columns at a time and by 2 threads,
    give the cache of the same images written in row groups of 500 and read whole, and of an independent reading."""
    rng = np.random.default_rng(7)
    images = rng.integers(200, 256, (2000, IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    boxed, _ = draw_boxes(2000, seed=8)
    images = np.minimum(images, boxed)  # dark boxes on a noisy page: every image has its own crop
    ids = [f"Train_{i}" for i in range(2000)]
    roots = {}
    for layout, rows in (("single", None), ("row-groups", 500)):
        roots[layout] = tmp_path / layout
        roots[layout].mkdir()
        write_image_parquet(roots[layout] / "train_image_data_0.parquet", ids, images, row_group_rows=rows)
    monkeypatch.setattr(kaggle, "READ_BUFFER_BYTES", 500 * N_PIXELS)
    monkeypatch.setattr(kaggle, "DECODE_BYTES", 256 * 2 * 2000 * kaggle.DECODE_BYTES_PER_VALUE)  # 256 columns
    single = kaggle.ImageFiles([roots["single"] / "train_image_data_0.parquet"], workers=2)
    assert [(c.row_groups, c.start, c.stop) for c in single.chunks] == [
        ((0,), 0, 500), ((0,), 500, 1000), ((0,), 1000, 1500), ((0,), 1500, 2000)]
    got = {layout: cache_bytes(root, size=64, workers=2) for layout, root in roots.items()}
    assert got["single"][1] == got["row-groups"][1]
    assert got["single"][1]["train"].splitlines()[1:] == ids
    np.testing.assert_array_equal(got["single"][0]["train"], got["row-groups"][0]["train"])
    table = pq.read_table(roots["single"] / "train_image_data_0.parquet")  # pyarrow's own reading, all at once
    raw = np.asarray(table.drop_columns(["image_id"]).to_tensor(row_major=True), np.uint8)
    np.testing.assert_array_equal(got["single"][0]["train"],
                                  preprocess(raw.reshape(-1, IMAGE_HEIGHT, IMAGE_WIDTH), 64))


def test_workers_do_not_change_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(kaggle, "READ_BUFFER_BYTES", 5 * N_PIXELS)
    root = write_dataset(tmp_path / "data", layout="single")
    one = cache_bytes(root, workers=1)
    three = cache_bytes(root, workers=3)
    assert one[1] == three[1]
    np.testing.assert_array_equal(one[0]["train"], three[0]["train"])
    code, out = run_cli("prepare", root, "--size", 24, "--workers", 0)
    assert_one_line_error(code, out, "--workers 0", "at least 1")
