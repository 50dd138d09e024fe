"""The Bengali.AI competition file format, its images: the image parquet files (okkhor.io.labels: its CSVs)."""
from __future__ import annotations

import functools
import os
import re
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from okkhor.errors import OkkhorError
from okkhor.utils.files import atomic_path

IMAGE_HEIGHT = 137
IMAGE_WIDTH = 236
N_PIXELS = IMAGE_HEIGHT * IMAGE_WIDTH  # 32,332
PIXEL_COLUMNS = tuple(str(i) for i in range(N_PIXELS))
_PARQUET_RE = re.compile(r"^(train|test)_image_data_(\d+)\.parquet$")


def image_parquet_files(data_dir: str | Path, split: str) -> list[Path]:
    """The `<split>_image_data_<i>.parquet` files of a data dir, in index order."""
    data_dir = Path(data_dir)
    found = []
    for p in data_dir.glob(f"{split}_image_data_*.parquet"):
        m = _PARQUET_RE.match(p.name)
        if m and m.group(1) == split:
            found.append((int(m.group(2)), p))
    return [p for _, p in sorted(found)]


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise OkkhorError(f"{path}: file not found")
    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for truncated or non-parquet files
        raise OkkhorError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def check_image_schema(path: Path, schema: pa.Schema) -> None:
    """Fail with one line naming the file unless it has image_id and 32,332 integer pixel columns '0'..'32331'."""
    names = schema.names
    if "image_id" not in names:
        raise OkkhorError(f"{path}: missing column image_id")
    pixels = [n for n in names if n != "image_id"]
    if len(pixels) != N_PIXELS:
        raise OkkhorError(f"{path}: expected {N_PIXELS} pixel columns ({IMAGE_HEIGHT}x{IMAGE_WIDTH} images), "
                          f"found {len(pixels)}")
    if tuple(pixels) != PIXEL_COLUMNS:
        raise OkkhorError(f"{path}: pixel columns must be named '0'..'{N_PIXELS - 1}' in order")
    for name in pixels:
        t = schema.field(name).type
        if not pa.types.is_integer(t):
            raise OkkhorError(f"{path}: column '{name}' has type {t}; pixel values must be uint8")


def open_image_parquet(path: str | Path) -> pq.ParquetFile:
    """Open an image parquet file and check its schema, so errors come before any work."""
    path = Path(path)
    pf = _open_parquet(path)
    check_image_schema(path, pf.schema_arrow)
    return pf


READ_BUFFER_BYTES = 576 << 20  # row-major images of one chunk: 18,680 rows; a 50,210-row group is read in 3 passes
DECODE_BYTES = 32 << 20        # Arrow's working memory for the column blocks being decoded at once, all threads
DECODE_BYTES_PER_VALUE = 13    # measured: Arrow holds about 13 bytes per value of each column it decodes


@dataclass(frozen=True)
class ReadChunk:
    """Rows [start, stop) of the concatenation of some consecutive row groups of one file: one pass of reading."""

    file: int
    row_groups: tuple[int, ...]
    start: int
    stop: int
    decoded_rows: int  # rows decoded per column: all rows of the row groups

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(row_group_rows: Sequence[int], max_rows: int, file: int = 0) -> list[ReadChunk]:
    """Cut a file's row groups into chunks of at most `max_rows` rows, in file order.

    Consecutive small row groups share a chunk; a row group larger than `max_rows` (the competition's files hold
    one 50,210-row group) is read in ceil(rows / max_rows) nearly equal passes, each decoding the whole group and
    keeping its own rows: decoding costs a few times over, but the memory stays bounded on any layout.
    """
    chunks: list[ReadChunk] = []
    packed: list[int] = []

    def close_pack() -> None:
        if packed:
            n = sum(row_group_rows[g] for g in packed)
            chunks.append(ReadChunk(file, tuple(packed), 0, n, n))
            packed.clear()

    for g, n in enumerate(row_group_rows):
        if n == 0:
            continue
        if n > max_rows:
            close_pack()
            parts = -(-n // max_rows)
            bounds = [n * i // parts for i in range(parts + 1)]
            chunks += [ReadChunk(file, (g,), a, b, n) for a, b in zip(bounds, bounds[1:], strict=False)]
            continue
        if sum(row_group_rows[i] for i in packed) + n > max_rows:
            close_pack()
        packed.append(g)
    close_pack()
    return chunks


class ImageFiles:
    """Several image parquet files read as one stream: schemas checked and the row count known before any work.

    Reading goes in column-block order, which keeps memory bounded on any layout: a chunk of rows (see
    `plan_chunks`) lands in one reused row-major buffer, a block of pixel columns at a time (each block decoded for
    every row of its row groups, then transposed into its columns of the buffer), the blocks spread over `workers`
    threads (Arrow's decoding and OpenCV's transpose release the GIL). Arrow needs about 13 bytes per value of
    the columns it decodes at once; blocks of a few dozen columns keep that within DECODE_BYTES and in cache
    (measured on a 50,210-row group: about 95 us a column in blocks of 4 columns, 125 us in blocks of 256).
    Peak memory is about READ_BUFFER_BYTES + DECODE_BYTES + 100 MB of file metadata + the interpreter.
    `buffer_bytes` / `decode_bytes` override the two budgets.
    """

    def __init__(self, files: Sequence[str | Path], workers: int | None = 1,
                 buffer_bytes: int | None = None, decode_bytes: int | None = None):
        self.files = [Path(f) for f in files]
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._opened = [open_image_parquet(f) for f in self.files]
        self.total = sum(pf.metadata.num_rows for pf in self._opened)
        self.max_rows = max(1, (READ_BUFFER_BYTES if buffer_bytes is None else buffer_bytes) // N_PIXELS)
        self.decode_bytes = DECODE_BYTES if decode_bytes is None else decode_bytes
        self.chunks = [c for i, pf in enumerate(self._opened) for c in plan_chunks(
            [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)], self.max_rows, i)]
        schemas = [pf.schema_arrow for pf in self._opened]
        self._id_index = [schema.get_field_index("image_id") for schema in schemas]
        self._pixel_index = [[i for i, name in enumerate(schema.names) if name != "image_id"] for schema in schemas]
        self._uint8 = [all(pa.types.is_uint8(schema.field(i).type) for i in index)
                       for schema, index in zip(schemas, self._pixel_index, strict=False)]
        self._local = threading.local()

    def read(self, pool: Executor | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
        """(image_ids, images uint8 [n, 137, 236]) a chunk at a time, in file order.

        The images are a view of one buffer that the next chunk overwrites: use them before asking for more.
        `pool`: threads to read with (default: a pool of `workers` threads for the duration of the read).
        """
        if pool is None:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="okkhor-read") as own:
                yield from self.read(own)
            return
        buffer = np.empty((max((c.rows for c in self.chunks), default=0), N_PIXELS), np.uint8)
        for chunk in self.chunks:
            per_column = self.workers * chunk.decoded_rows * DECODE_BYTES_PER_VALUE
            width = max(8, min(4096, self.decode_bytes // per_column))
            out = buffer[:chunk.rows]
            blocks = [(c, min(c + width, N_PIXELS)) for c in range(0, N_PIXELS, width)]
            for _ in pool.map(functools.partial(self._read_block, chunk, out=out), blocks):
                pass
            ids = self._read_table(chunk, [self._id_index[chunk.file]]).column(0).slice(chunk.start, chunk.rows)
            ids = ids.to_pylist()
            yield [str(v) for v in ids], out.reshape(chunk.rows, IMAGE_HEIGHT, IMAGE_WIDTH)

    def batches(self, batch_rows: int = 1024) -> Iterator[tuple[list[str], np.ndarray]]:
        """(image_ids, images uint8 [n <= batch_rows, 137, 236]) in file order; views valid until the next batch."""
        for ids, images in self.read():
            for s in range(0, len(ids), batch_rows):
                yield ids[s:s + batch_rows], images[s:s + batch_rows]

    def _reader(self, file: int) -> pq.ParquetReader:
        """This thread's reader of a file (Arrow's readers are not shared across threads); metadata parsed once."""
        readers = self._local.__dict__.setdefault("readers", {})
        if file not in readers:
            readers[file] = pq.ParquetReader()
            readers[file].open(self.files[file], metadata=self._opened[file].metadata, pre_buffer=False)
        return readers[file]

    def _read_table(self, chunk: ReadChunk, columns: list[int]) -> pa.Table:
        """Columns (indices in the file) of a chunk's row groups, all their rows."""
        path = self.files[chunk.file]
        try:
            table = self._reader(chunk.file).read_row_groups(list(chunk.row_groups), column_indices=columns,
                                                             use_threads=False)
        except Exception as exc:  # a truncated or corrupt file fails while decoding
            raise OkkhorError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None
        if table.num_rows != chunk.decoded_rows:
            raise OkkhorError(f"{path}: row groups {chunk.row_groups[0]}..{chunk.row_groups[-1]} hold "
                              f"{table.num_rows} rows, the metadata says {chunk.decoded_rows}")
        return table

    def _read_block(self, chunk: ReadChunk, block: tuple[int, int], out: np.ndarray) -> None:
        """Pixel columns [c0, c1) of a chunk's rows, checked, into out[:, c0:c1] (row-major images)."""
        import cv2

        c0, c1 = block
        path = self.files[chunk.file]
        table = self._read_table(chunk, self._pixel_index[chunk.file][c0:c1])
        uint8 = self._uint8[chunk.file]
        columns = np.empty((c1 - c0, chunk.rows), np.uint8 if uint8 else np.int64)
        start, stop = chunk.start, chunk.stop
        for j, column in enumerate(table.columns):
            if column.null_count:
                raise OkkhorError(f"{path}: column '{c0 + j}' has missing values")
            if column.num_chunks == 1:
                columns[j] = column.chunk(0).to_numpy()[start:stop]
            else:  # several row groups: one piece each
                columns[j] = np.concatenate([piece.to_numpy() for piece in column.chunks])[start:stop]
        if not uint8:
            bad = ((columns < 0) | (columns > 255)).any(axis=1)
            if bad.any():
                raise OkkhorError(f"{path}: column '{c0 + int(np.flatnonzero(bad)[0])}' has values outside 0..255; "
                                  f"pixels must be uint8")
            columns = columns.astype(np.uint8)
        out[:, c0:c1] = cv2.transpose(columns)


def iter_image_parquet(path: str | Path, batch_rows: int = 1024) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield (image_ids, images uint8 [n, 137, 236]) of one file in row batches, each a copy the caller may keep."""
    for ids, images in ImageFiles([path]).batches(batch_rows):
        yield ids, images.copy()


IMAGE_SCHEMA = pa.schema([pa.field("image_id", pa.string())] + [pa.field(c, pa.uint8()) for c in PIXEL_COLUMNS])


def pixel_columns(images: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Images uint8 [n, 137, 236] as column-major pixels [32332, n] (one parquet column per row), into `out`."""
    import cv2

    flat = images.reshape(len(images), N_PIXELS)
    out = np.empty((N_PIXELS, len(images)), np.uint8) if out is None else out
    for p in range(0, N_PIXELS, 4096):  # cv2's blocked transpose is several times numpy's strided copy
        out[p:p + 4096] = cv2.transpose(flat[:, p:p + 4096])
    return out


class ImageParquetWriter:
    """Streams images into one competition-layout parquet file, renamed into place on success.

    `row_group_rows`: "write" (the default) makes each `write` / `write_columns` call one row group; an int makes
    row groups of exactly that many rows (the last one smaller), whatever the calls; None makes the whole file one
    row group, as the competition's files are (pandas wrote each in one piece), and holds every row until the file
    is closed. Parquet pays a fixed cost per row group for each of the 32,332 columns, so row groups should hold
    thousands of rows. Dictionary encoding keeps synthetic files about 2.4x smaller than plain encoding (34 against
    67 KB an image), is no slower to write, and decodes faster.
    """

    def __init__(self, path: str | Path, row_group_rows: int | None | str = "write"):
        if not (row_group_rows is None or row_group_rows == "write"
                or (isinstance(row_group_rows, int) and row_group_rows > 0)):
            raise ValueError(f"row_group_rows must be a positive int, None or 'write', got {row_group_rows!r}")
        self.path = Path(path)
        self.row_group_rows = row_group_rows
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[tuple[list[str], np.ndarray]] = []  # rows of the row group being gathered
        self._pending_rows = 0

    def __enter__(self) -> "ImageParquetWriter":
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path))
            self._writer = stack.enter_context(pq.ParquetWriter(tmp, IMAGE_SCHEMA, compression="snappy",
                                                                use_dictionary=True))
            self._stack = stack.pop_all()
        return self

    def write_columns(self, image_ids: Sequence[str], columns: np.ndarray) -> None:
        """Rows from column-major pixels uint8 [32332, n] (see `pixel_columns`)."""
        if columns.dtype != np.uint8 or columns.ndim != 2 or columns.shape[0] != N_PIXELS:
            raise OkkhorError(f"{self.path}: pixel columns must be uint8 [{N_PIXELS}, n], got "
                              f"{columns.dtype} {list(columns.shape)}")
        if len(image_ids) != columns.shape[1]:
            raise OkkhorError(f"{self.path}: {len(image_ids)} image ids for {columns.shape[1]} images")
        self._add(list(image_ids), columns, owned=False)

    def write(self, image_ids: Sequence[str], images: np.ndarray) -> None:
        """Rows from images uint8 [n, 137, 236]."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_HEIGHT, IMAGE_WIDTH):
            raise OkkhorError(f"{self.path}: images must be uint8 [n, {IMAGE_HEIGHT}, {IMAGE_WIDTH}], got "
                              f"{images.dtype} {list(images.shape)}")
        if len(image_ids) != len(images):
            raise OkkhorError(f"{self.path}: {len(image_ids)} image ids for {len(images)} images")
        self._add(list(image_ids), pixel_columns(images), owned=True)

    def _add(self, image_ids: list[str], columns: np.ndarray, owned: bool) -> None:
        """Gather rows into row groups; `owned`: `columns` is this writer's to keep (else copied if kept)."""
        if self.row_group_rows == "write":
            self._write_group([(image_ids, columns)])
            return
        start, n, kept = 0, columns.shape[1], len(self._pending)
        while start < n:
            room = n - start if self.row_group_rows is None else self.row_group_rows - self._pending_rows
            take = min(room, n - start)
            self._pending.append((image_ids[start:start + take], columns[:, start:start + take]))
            self._pending_rows += take
            start += take
            if self._pending_rows == self.row_group_rows:
                self._flush()
                kept = 0
        if not owned:  # what outlives this call must not change when the caller reuses its buffer
            self._pending[kept:] = [(ids, block.copy()) for ids, block in self._pending[kept:]]

    def _write_group(self, pieces: list[tuple[list[str], np.ndarray]]) -> None:
        """One row group from pieces of (ids, columns [32332, k]): each column a chunked array, nothing copied."""
        rows = sum(len(ids) for ids, _ in pieces)
        if not rows:
            return
        arrays = [pa.chunked_array([pa.array(ids, pa.string()) for ids, _ in pieces], pa.string())]
        arrays += [pa.chunked_array([block[j] for _, block in pieces], pa.uint8()) for j in range(N_PIXELS)]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=IMAGE_SCHEMA), row_group_size=rows)

    def _flush(self) -> None:
        pieces, self._pending, self._pending_rows = self._pending, [], 0
        self._write_group(pieces)

    def __exit__(self, *exc) -> bool:
        if exc[0] is not None:
            return self._stack.__exit__(*exc)  # close the writer and delete the file
        with self._stack:  # write the gathered rows, close the writer, then rename (or, on an error, delete)
            self._flush()
        return False


def write_image_parquet(path: str | Path, image_ids: Sequence[str], images: np.ndarray,
                        row_group_rows: int | None = 4096) -> None:
    """Write images uint8 [n, 137, 236] in the competition's layout (image_id, then '0'..'32331'), atomically.

    `row_group_rows`: rows per row group; None writes one row group, as the competition's files have.
    """
    step = len(images) if row_group_rows is None else row_group_rows
    with ImageParquetWriter(path, row_group_rows) as writer:
        for start in range(0, len(images), max(step, 1)):
            writer.write(image_ids[start:start + step], images[start:start + step])
