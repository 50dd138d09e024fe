"""Other labelled handwriting: an ImageFolder tree of images written in the competition's format, labels by a map."""
from __future__ import annotations

import contextlib
import os
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from okkhor.errors import OkkhorError
from okkhor.io.kaggle import IMAGE_HEIGHT, IMAGE_WIDTH, ImageParquetWriter, image_parquet_files
from okkhor.io.labels import check_labels
from okkhor.io.layout import SPLIT_CSVS, class_map_frame, file_rows, image_file_name, write_split_csvs
from okkhor.targets import Targets
from okkhor.utils.files import write_csv_atomic

MARGIN = 8            # page pixels kept free around the scaled image
DARK_BACKGROUND = 128  # a border median below this means light ink on a dark background: the image is inverted
ROW_GROUP_ROWS = 4096  # images per parquet row group (a fixed cost per group and column: keep groups big)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
MAP_FOLDER = "folder"
MAP_EXTRA = ("grapheme",)  # label-map columns carried into the label files as they are


def read_label_map(path: str | Path, class_map: str | Path | None = None
                   ) -> tuple[dict[str, np.ndarray], Targets, pd.DataFrame]:
    """MAP.csv: `folder` and one column per target it gives (any targets of the class map: `class_map`, else the
    built-in Bengali one), and optionally `grapheme`. Returns {folder: labels int64 [n_targets]}, the targets
    (in class-map order, with their classes) and the map's rows indexed by folder."""
    path = Path(path)
    if not path.is_file():
        raise OkkhorError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many kinds for broken CSVs
        raise OkkhorError(f"{path}: cannot read label map ({str(exc).splitlines()[0]})") from None
    if MAP_FOLDER not in df.columns:
        raise OkkhorError(f"{path}: missing column {MAP_FOLDER}")
    full = Targets.from_class_map(class_map)
    given = [c for c in df.columns if c not in (MAP_FOLDER, *MAP_EXTRA)]
    unknown = [c for c in given if c not in full.names]
    if unknown or not given:
        what = f"column(s) {', '.join(unknown)} are not" if unknown else "no column names"
        raise OkkhorError(f"{path}: {what} a target of the class map; targets: {', '.join(full.names)}")
    names = [n for n in full.names if n in given]
    idx = [full.names.index(n) for n in names]
    targets = Targets.make(names, [full.num_classes[i] for i in idx],
                           components={n: full.components[n] for n in names if n in full.components})
    if df[MAP_FOLDER].duplicated().any():
        raise OkkhorError(f"{path}: folder {df.loc[df[MAP_FOLDER].duplicated(), MAP_FOLDER].iloc[0]!r} is mapped "
                          "twice")
    labels = check_labels(df, targets, path)
    return dict(zip(df[MAP_FOLDER], labels, strict=False)), targets, df.set_index(MAP_FOLDER)


def load_image(path: str | Path) -> np.ndarray | None:
    """A grayscale uint8 image from any file OpenCV decodes (transparency laid on white, 16 bits cut to 8), or
    None when it cannot be read."""
    import cv2

    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)  # the caller reports an unreadable file in one line of its own
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    finally:
        log.setLogLevel(level)
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img * (255.0 if float(img.max()) <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        alpha = img[..., 3:].astype(np.float32) / 255.0
        img = (img[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[..., 0]
    return np.ascontiguousarray(img)


def background_level(img: np.ndarray) -> int:
    """The median of the image's outermost pixels: the paper, for a character that does not fill its frame."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    return int(np.median(border))


def to_page(img: np.ndarray, page: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH), margin: int = MARGIN
            ) -> tuple[np.ndarray, bool]:
    """(uint8 page image, inverted): light ink on a dark background is inverted, then the image is scaled to fit
    the page less `margin` (aspect kept, area resampling to shrink) and centred on its own background level."""
    import cv2

    inverted = background_level(img) < DARK_BACKGROUND
    if inverted:
        img = 255 - img
    h, w = img.shape
    scale = min((page[0] - 2 * margin) / h, (page[1] - 2 * margin) / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.full(page, background_level(img), np.uint8)
    y, x = (page[0] - size[1]) // 2, (page[1] - size[0]) // 2
    out[y:y + size[1], x:x + size[0]] = img
    return out, inverted


def list_image_folder(image_dir: Path, mapped: Sequence[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folders of `image_dir`, [(image path, index into `mapped`)] for the folders in `mapped`), by
    torchvision's ImageFolder rules (`find_classes`, `make_dataset`: sorted folders, then the files with an image
    extension below each, sorted, links followed); the same as torchvision's without importing torch."""
    folders = sorted(entry.name for entry in os.scandir(image_dir) if entry.is_dir())
    if not folders:
        raise OkkhorError(f"{image_dir}: no class folders (expected IMAGE_DIR/<class>/<image>)")
    files = []
    for name, index in sorted((name, i) for i, name in enumerate(mapped)):
        for root, _, names in sorted(os.walk(image_dir / name, followlinks=True)):
            files += [(os.path.join(root, f), index) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return folders, files


def _existing(out_dir: Path, split: str) -> list[Path]:
    return [out_dir / n for n in SPLIT_CSVS[split] if (out_dir / n).exists()] + image_parquet_files(out_dir, split)


def _write_pages(out_dir: Path, split: str, stream: Iterator[tuple[str, np.ndarray]], rows: list[int]) -> list[str]:
    """Stream (image id, page) pairs into the split's parquet files of at most `rows` pages each; their names."""
    written: list[str] = []
    for index, most in enumerate(rows):
        part = islice(stream, most)
        group = list(islice(part, ROW_GROUP_ROWS))
        if not group:
            break
        path = out_dir / image_file_name(split, index)
        with ImageParquetWriter(path) as writer:
            while group:
                writer.write([g[0] for g in group], np.stack([g[1] for g in group]))
                group = list(islice(part, ROW_GROUP_ROWS))
        written.append(path.name)
    with contextlib.suppress(StopIteration):   # finish the stream: the last images may all be unreadable
        next(stream)
    return written


def import_image_folder(image_dir: str | Path, out_dir: str | Path, labels: str | Path, split: str = "train",
                        class_map: str | Path | None = None, rows_per_file: int | None = None,
                        overwrite: bool = False, warn: Callable[[str], None] = print,
                        show_progress: bool = True) -> dict:
    """Write the images of `image_dir` (one subfolder per class) as split `split` of a competition-format data
    set in `out_dir`: <split>_image_data_<i>.parquet, train.csv (or test.csv, sample_submission.csv and
    test_labels.csv) and class_map.csv (the targets `labels` gives). The other split's files are left alone, so
    a train and a test import can share `out_dir`. An unreadable image or a folder not in the label map costs one
    `warn` line each, and the rest is imported. Returns a summary."""
    from okkhor.utils.progress import progress

    start = time.perf_counter()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if split not in SPLIT_CSVS:
        raise OkkhorError(f"--split {split}: expected one of {', '.join(SPLIT_CSVS)}")
    if not image_dir.is_dir():
        raise OkkhorError(f"{image_dir}: not a folder")
    folder_labels, targets, label_map = read_label_map(labels, class_map)
    classes = class_map_frame(targets)
    if out_dir.exists() and not out_dir.is_dir():
        raise OkkhorError(f"{out_dir}: exists and is not a folder")
    existing = _existing(out_dir, split)
    if existing and not overwrite:
        raise OkkhorError(f"{out_dir}: already holds {split} files ({existing[0].name}); pass --overwrite to "
                          "replace them")
    class_map_file = out_dir / "class_map.csv"
    if class_map_file.is_file():
        if not classes.equals(pd.read_csv(class_map_file, dtype={"component": str}, keep_default_na=False)):
            raise OkkhorError(f"{class_map_file}: differs from the class map of {labels} (its targets "
                              f"{', '.join(targets.names)}); import into another folder")

    folders = list_image_folder(image_dir, [])[0]
    mapped = [f for f in folders if f in folder_labels]
    _, files = list_image_folder(image_dir, mapped)
    for folder in folders:
        if folder not in folder_labels:
            warn(f"{image_dir / folder}: folder not in {labels}")
    if not files:
        raise OkkhorError(f"{image_dir}: no images in the folders {labels} maps")

    prefix = split.capitalize()
    kept: list[int] = []   # index into files of each image written, in order
    counts = {"inverted": 0, "unreadable": 0}

    def pages() -> Iterator[tuple[str, np.ndarray]]:
        with progress(total=len(files), desc=f"import {split}", unit="img", disable=not show_progress) as bar:
            for i, (path, _) in enumerate(files):
                bar.update()
                img = load_image(path)
                if img is None:
                    counts["unreadable"] += 1
                    warn(f"{path}: cannot read image")
                    continue
                page, inverted = to_page(img)
                counts["inverted"] += inverted
                kept.append(i)
                yield f"{prefix}_{len(kept) - 1}", page

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in existing:  # only this split's own file names, and only with overwrite
        stale.unlink()
    written = _write_pages(out_dir, split, pages(), file_rows(len(files), rows_per_file))
    if not kept:
        raise OkkhorError(f"{image_dir}: none of the {len(files)} images could be read")

    kept_folders = [mapped[files[i][1]] for i in kept]
    frame = pd.DataFrame({"image_id": [f"{prefix}_{k}" for k in range(len(kept))]})
    values = np.stack([folder_labels[f] for f in kept_folders])
    for t, name in enumerate(targets.names):
        frame[name] = values[:, t]
    for extra in MAP_EXTRA:
        if extra in label_map.columns:
            frame[extra] = label_map.loc[kept_folders, extra].to_numpy()
    write_split_csvs(out_dir, split, frame, targets.names)
    write_csv_atomic(class_map_file, classes)
    seconds = time.perf_counter() - start
    return {"out_dir": str(out_dir), "split": split, "images": len(kept), "folders": len(set(kept_folders)),
            "inverted": counts["inverted"], "unreadable": counts["unreadable"],
            "unmapped_folders": len(folders) - len(mapped), "targets": list(targets.names), "files": written,
            "seconds": round(seconds, 2)}
