"""Write a stylised copy of a data dir: each image through the synthetic -> real generator, back on the page."""
from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn

from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache, prepare_split
from okkhor.errors import OkkhorError
from okkhor.io.kaggle import ImageFiles, ImageParquetWriter, image_parquet_files
from okkhor.io.layout import SPLIT_CSVS
from okkhor.sources.imagefolder import to_page
from okkhor.sources.stylize.fit import check_threads, to_tensor, torch_threads
from okkhor.sources.stylize.stylizer import load_stylizer
from okkhor.utils.files import atomic_path, check_writable
from okkhor.utils.progress import progress

SPLITS = ("train", "test")
CSV_FILES = (*SPLIT_CSVS["train"], *SPLIT_CSVS["test"], "class_map.csv")
ROW_GROUP_ROWS = 4096   # images per parquet row group, as okkhor import writes


def near_ink(crops: np.ndarray, reach: int) -> np.ndarray:
    """bool [n, s, s]: the pixels within `reach` pixels (a disc) of each crop's ink, the ink found by Otsu's
    threshold of that crop (synthetic paper may be shaded, synthetic ink grey)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    out = np.empty(crops.shape, bool)
    for i, crop in enumerate(crops):
        _, ink = cv2.threshold(np.ascontiguousarray(crop), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out[i] = cv2.dilate(ink, kernel) > 0
    return out


def stylize_crops(generator: nn.Module, crops: np.ndarray, reach: int | None = None) -> np.ndarray:
    """uint8 crops [n, s, s] (bright ink on black, as prepared) -> the generator's uint8 crops, the same way up.

    With `reach`, what the generator draws farther than `reach` pixels from the input's ink becomes background:
    CycleGAN's generators learn to hide what the cycle needs to restore (here the paper's shade and the ink's grey)
    in stray marks (Chu et al. 2017, "CycleGAN, a master of steganography"); measured on a 1,500-step stylizer,
    a third of its 64 px outputs had a mark in a corner, which would stretch the ink box okkhor prepare crops to.
    """
    with torch.inference_mode():
        out = generator(to_tensor(crops)).float()
    out = out.squeeze(1).add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return out if reach is None else np.where(near_ink(crops, reach), out, 0).astype(np.uint8)


def to_pages(crops: np.ndarray) -> np.ndarray:
    """uint8 crops [n, s, s] (bright ink on black) -> competition pages uint8 [n, 137, 236]: dark ink on a light
    page, each crop scaled and centred as `okkhor import` places an image (okkhor.sources.imagefolder.to_page)."""
    pages = []
    for crop in crops:
        page, inverted = to_page(255 - crop)
        pages.append(255 - page if inverted else page)  # a crop whose border is mostly ink keeps its polarity
    return np.stack(pages)


def _existing(out_dir: Path) -> list[Path]:
    """What makes `out_dir` a data dir: its CSV files and image parquet files."""
    found = [out_dir / n for n in CSV_FILES if (out_dir / n).exists()]
    return found + [p for split in SPLITS for p in image_parquet_files(out_dir, split)]


def _check_dirs(synth_dir: Path, out_dir: Path, overwrite: bool) -> list[Path]:
    """Fail in one line on a missing input, an output that is the input, or an output that holds a data dir
    (unless `overwrite`); return the output's files to replace."""
    if not synth_dir.is_dir():
        raise OkkhorError(f"--synth {synth_dir}: data directory not found")
    if not any(image_parquet_files(synth_dir, split) for split in SPLITS):
        raise OkkhorError(f"--synth {synth_dir}: no train_image_data_*.parquet or test_image_data_*.parquet files")
    check_writable(out_dir, "--out", folder=True)
    if out_dir.exists() and out_dir.resolve() == synth_dir.resolve():
        raise OkkhorError(f"--out {out_dir}: is the --synth data dir; write the stylised copy elsewhere")
    existing = _existing(out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise OkkhorError(f"--out {out_dir}: already holds a data dir ({existing[0].name}); pass --overwrite to "
                          "replace it")
    return existing


def _stylize_split(styler: Callable[[np.ndarray], np.ndarray], synth_dir: Path, out_dir: Path, split: str,
                   size: int, batch: int, show_progress: bool) -> dict[str, int]:
    """Write one split's parquet files: the same names, rows and image ids as the input's, stylised images.
    Returns {file name: rows}."""
    files = image_parquet_files(synth_dir, split)
    opts = PrepareOptions(size=size)
    cache = default_cache_dir(synth_dir, opts)
    prepare_split(synth_dir, split, opts, cache, show_progress=show_progress)
    crops, ids = load_cache(cache, split)
    source = ImageFiles(files)   # checks each file's schema; its reading plan gives each file's rows
    rows = [sum(c.rows for c in source.chunks if c.file == i) for i in range(len(files))]
    if sum(rows) != len(ids):
        raise OkkhorError(f"{cache}: {len(ids)} cached {split} images for {sum(rows)} rows in the parquet files; "
                          "delete the cache and rerun")
    start = 0
    with progress(total=len(ids), desc=f"stylize {split}", unit="img", disable=not show_progress) as bar:
        for path, n in zip(files, rows, strict=True):
            with ImageParquetWriter(out_dir / path.name, row_group_rows=ROW_GROUP_ROWS) as writer:
                for s in range(start, start + n, batch):
                    e = min(s + batch, start + n)
                    writer.write(ids[s:e], to_pages(styler(crops[s:e])))
                    bar.update(e - s)
            start += n
    return {p.name: n for p, n in zip(files, rows, strict=True)}


def stylize_dir(stylizer: str | Path, synth_dir: str | Path, out_dir: str | Path, batch: int = 64,
                reach: int | None = -1, overwrite: bool = False, show_progress: bool = True,
                threads: int | None = 1) -> dict:
    """Write a stylised copy of `synth_dir` into `out_dir`: each split's parquet files with every image replaced
    by the stylizer's synthetic -> real generator's output on the 137x236 page, and its CSV files (train.csv,
    test.csv, sample_submission.csv, test_labels.csv, class_map.csv) copied. Each file is written under a
    temporary name and renamed; the CSV files come last, so an interrupted copy is no data dir. Deterministic.
    `reach`: pixels (at the stylizer's size) the stylised ink may lie from the synthetic ink (see `stylize_crops`);
    -1: a sixteenth of the size (4 at 64 px); None keeps every mark. `threads`: torch's intra-op threads (see
    `fit_stylizer`; None: torch's default).
    Returns a summary."""
    started = time.perf_counter()
    synth_dir, out_dir = Path(synth_dir), Path(out_dir)
    if batch < 1:
        raise OkkhorError(f"--batch {batch}: must be at least 1")
    check_threads(threads)
    if reach is not None and reach < -1:
        raise OkkhorError(f"--reach {reach}: must be at least 0 (or -1: the default)")
    opts, nets, _ = load_stylizer(stylizer)
    reach = opts.size // 16 if reach == -1 else reach
    styler = functools.partial(stylize_crops, nets["synth_to_real"], reach=reach)
    stale = _check_dirs(synth_dir, out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in stale:   # only the data dir's own file names, and only with overwrite
        path.unlink()
    written: dict[str, dict[str, int]] = {}
    with torch_threads(threads):
        for split in SPLITS:
            if image_parquet_files(synth_dir, split):
                written[split] = _stylize_split(styler, synth_dir, out_dir, split, opts.size, batch, show_progress)
    copied = []
    for name in CSV_FILES:
        if (synth_dir / name).is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(synth_dir / name, tmp)
            copied.append(name)
    return {"out_dir": str(out_dir), "size": opts.size, "reach": reach, "files": written, "copied": copied,
            "images": {split: sum(files.values()) for split, files in written.items()},
            "seconds": round(time.perf_counter() - started, 2)}
