"""The prepare cache: crop to the ink, pad to the output's shape, resize; a memory-mappable uint8 array per split."""
from __future__ import annotations

import hashlib
import json
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd

from okkhor.errors import OkkhorError
from okkhor.io.kaggle import N_PIXELS, ImageFiles, image_parquet_files
from okkhor.utils.files import atomic_path, write_csv_atomic, write_text_atomic
from okkhor.utils.progress import progress
from okkhor.utils.sizes import Size, hw, parse_size, size_option, size_text, yaml_value

CACHE_VERSION = 1
INK_THRESHOLD = 80   # on the inverted image: pixels above this count as ink
EDGE = 5             # pixels ignored at each border when finding the ink (scanner edges, lines)
MARGIN = 8           # pixels added around the ink's bounding box, in source pixels
PREPROCESS_BYTES = 64 << 20  # working memory of the preprocessing batches in flight, all threads together


@dataclass(frozen=True)
class PrepareOptions:
    size: Size = 128      # a square side or (H, W); any form okkhor.utils.sizes.parse_size takes, kept canonical
    crop: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", parse_size(self.size))

    def dirname(self) -> str:
        return size_text(self.size) if self.crop else f"{size_text(self.size)}-nocrop"


def ink_bbox(inverted: np.ndarray, threshold: int = INK_THRESHOLD, edge: int = EDGE) -> np.ndarray:
    """Bounding boxes [n, 4] (y0, y1, x0, x1; half-open) of ink in inverted images [n, h, w]; the whole image if
    none."""
    n, h, w = inverted.shape
    core = inverted[:, edge:h - edge, edge:w - edge] > threshold
    rows = core.any(axis=2)
    cols = core.any(axis=1)
    boxes = np.empty((n, 4), dtype=np.int64)
    has_ink = rows.any(axis=1)
    boxes[:, 0] = np.where(has_ink, rows.argmax(axis=1) + edge, 0)
    boxes[:, 1] = np.where(has_ink, rows.shape[1] - rows[:, ::-1].argmax(axis=1) + edge, h)
    boxes[:, 2] = np.where(has_ink, cols.argmax(axis=1) + edge, 0)
    boxes[:, 3] = np.where(has_ink, cols.shape[1] - cols[:, ::-1].argmax(axis=1) + edge, w)
    return boxes


def crop_to_shape(inverted: np.ndarray, box: np.ndarray, shape: tuple[int, int] = (1, 1),
                  margin: int = MARGIN) -> np.ndarray:
    """Cut the box plus a margin out of one inverted image and pad it with zeros, centred, to the smallest
    frame of `shape`'s aspect ratio (height, width) that holds it: a square for (1, 1)."""
    h, w = inverted.shape
    y0, y1, x0, x1 = (int(v) for v in box)
    y0, y1, x0, x1 = max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w)
    part = inverted[y0:y1, x0:x1]
    scale = max(part.shape[0] / shape[0], part.shape[1] / shape[1])
    fh, fw = max(part.shape[0], round(scale * shape[0])), max(part.shape[1], round(scale * shape[1]))
    out = np.zeros((fh, fw), dtype=np.uint8)
    oy, ox = (fh - part.shape[0]) // 2, (fw - part.shape[1]) // 2
    out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    return out


def preprocess(images: np.ndarray, size: Size, crop: bool = True) -> np.ndarray:
    """Raw images uint8 [n, 137, 236] (dark ink on white) -> uint8 [n, H, W] with bright ink on black; `size`
    is a square side or (H, W). With `crop` the ink is cut out and padded to the output's aspect ratio first."""
    h, w = hw(size)
    inverted = 255 - np.asarray(images, dtype=np.uint8)
    out = np.empty((len(inverted), h, w), dtype=np.uint8)
    if crop:
        boxes = ink_bbox(inverted)
        for i in range(len(inverted)):
            out[i] = cv2.resize(crop_to_shape(inverted[i], boxes[i], (h, w)), (w, h), interpolation=cv2.INTER_AREA)
    else:
        for i in range(len(inverted)):
            out[i] = cv2.resize(inverted[i], (w, h), interpolation=cv2.INTER_AREA)
    return out


def _fingerprint(files: list[Path], opts: PrepareOptions) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size_text(opts.size)}|{opts.crop}|{INK_THRESHOLD}|{EDGE}|{MARGIN}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def default_cache_dir(data_dir: str | Path, opts: PrepareOptions) -> Path:
    return Path(data_dir) / "cache" / opts.dirname()


def cache_paths(cache_dir: Path, split: str) -> tuple[Path, Path, Path]:
    """(images .npy, image ids .csv, meta .json) of one split in a cache dir."""
    return cache_dir / f"{split}.npy", cache_dir / f"{split}_ids.csv", cache_dir / f"{split}.json"


def _ordered(pool: Executor, fn: Callable, items: Sequence, ahead: int) -> Iterator:
    """fn(item) for each item, in order, computed on `pool` with at most `ahead` results waiting."""
    waiting: deque = deque()
    for item in items:
        waiting.append(pool.submit(fn, item))
        if len(waiting) >= ahead:
            yield waiting.popleft().result()
    while waiting:
        yield waiting.popleft().result()


def prepare_split(data_dir: str | Path, split: str, opts: PrepareOptions, cache_dir: Path,
                  batch_rows: int | None = None, show_progress: bool = True, workers: int | None = None
                  ) -> tuple[Path, bool]:
    """Build (or reuse) the cache of one split. Returns (npy path, reused).

    `workers`: threads that read and preprocess (default: every CPU); the cache is the same whatever it is.
    `batch_rows`: images per preprocessing task (default: up to 512, fewer with many workers, so that the tasks in
    flight stay within PREPROCESS_BYTES).
    """
    files = image_parquet_files(data_dir, split)
    if not files:
        raise OkkhorError(f"{data_dir}: no {split}_image_data_*.parquet files")
    npy, ids_csv, meta = cache_paths(cache_dir, split)
    fp = _fingerprint(files, opts)
    if npy.is_file() and ids_csv.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()).get("fingerprint") == fp:
                return npy, True
        except (json.JSONDecodeError, OSError):
            pass
    source = ImageFiles(files, workers=workers)
    total = source.total
    ahead = 2 * source.workers  # preprocessing tasks in flight: `workers` running, as many done and waiting
    height, width = hw(opts.size)
    per_image = 3 * N_PIXELS + height * width  # the inverted image, its ink mask, and what they come from
    batch_rows = batch_rows or max(8, min(512, PREPROCESS_BYTES // (ahead * per_image)))
    ids: list[str] = []
    # Written as a plain sequential file (header, then rows): a write memmap would keep every output page
    # resident, which counts against the memory budget on large files.
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh, \
            ThreadPoolExecutor(source.workers, thread_name_prefix="okkhor-prepare") as pool:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                 "shape": (total, height, width)})
        with progress(total=total, desc=f"prepare {split}", unit="img", disable=not show_progress) as bar:
            for chunk_ids, images in source.read(pool):
                def work(start: int, images=images) -> np.ndarray:
                    return preprocess(images[start:start + batch_rows], opts.size, opts.crop)

                for out in _ordered(pool, work, range(0, len(images), batch_rows), ahead):
                    fh.write(memoryview(np.ascontiguousarray(out)).cast("B"))
                    bar.update(len(out))
                ids.extend(chunk_ids)
        fh.flush()
    write_csv_atomic(ids_csv, pd.DataFrame({"image_id": ids}))
    write_text_atomic(meta, json.dumps({"fingerprint": fp, "size": yaml_value(opts.size), "crop": opts.crop,
                                        "count": total, "files": [f.name for f in files]}, indent=1))
    return npy, False


def prepare(data_dir: str | Path, size: Size | str = 128, crop: bool = True, out: str | Path | None = None,
            splits: tuple[str, ...] = ("train", "test"), show_progress: bool = True,
            workers: int | None = None) -> dict[str, dict]:
    """Prepare the cache for train and test (test only where its parquet files exist); `size` is a square side
    or (H, W) ("128x224")."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    size = size_option(size)
    if workers is not None and workers < 1:
        raise OkkhorError(f"--workers {workers}: must be at least 1")
    opts = PrepareOptions(size=size, crop=crop)
    cache_dir = Path(out) if out else default_cache_dir(data_dir, opts)
    result: dict[str, dict] = {}
    for split in splits:
        if split != "train" and not image_parquet_files(data_dir, split):
            continue
        npy, reused = prepare_split(data_dir, split, opts, cache_dir, show_progress=show_progress, workers=workers)
        result[split] = {"path": str(npy), "reused": reused, "count": int(np.load(npy, mmap_mode="r").shape[0])}
    return result


def load_cache(cache_dir: str | Path, split: str) -> tuple[np.ndarray, list[str]]:
    """The memory-mapped images [n, H, W] and their image ids."""
    npy, ids_csv, _ = cache_paths(Path(cache_dir), split)
    if not npy.is_file() or not ids_csv.is_file():
        raise OkkhorError(f"{cache_dir}: no prepared {split} cache (run `okkhor prepare`)")
    images = np.load(npy, mmap_mode="r")
    ids = pd.read_csv(ids_csv)["image_id"].astype(str).tolist()
    if len(ids) != len(images):
        raise OkkhorError(f"{ids_csv}: {len(ids)} ids for {len(images)} cached images; delete the cache and rerun")
    return images, ids


def cache_fingerprint(images: np.ndarray, image_ids: list[str]) -> str:
    """A sha256 of a prepared cache's image ids, shape and dtype and of its first and last images (cheap: the
    cache is not read whole)."""
    import hashlib

    h = hashlib.sha256("\n".join(image_ids).encode())
    h.update(f"{tuple(images.shape)} {images.dtype}".encode())
    if len(images):
        h.update(np.ascontiguousarray(images[0]).tobytes())
        h.update(np.ascontiguousarray(images[-1]).tobytes())
    return h.hexdigest()
