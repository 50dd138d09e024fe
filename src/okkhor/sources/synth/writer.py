"""`synthesize`: a synthetic dataset written as the competition's files (labels, drawing plan, image files, CSVs)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Sequence

import pandas as pd

from okkhor.bengali import TARGETS
from okkhor.errors import OkkhorError
from okkhor.io.kaggle import image_parquet_files
from okkhor.io.layout import MAX_ROWS_PER_FILE, file_rows, image_file_name, write_split_csvs
from okkhor.sources.synth.checks import check_count, check_fraction, check_preview
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.fonts import discover_fonts, load_font_dir, select_fonts
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.imager import Variation
from okkhor.sources.synth.labels import (
    Listed,
    Sample,
    listed_samples,
    missing_triples,
    read_grapheme_list,
    sample_labels,
)
from okkhor.sources.synth.plan import Draw, check_style, holdout_faces, plan_draws
from okkhor.sources.synth.preview import write_preview
from okkhor.sources.synth.shape_style import ShapeStyle
from okkhor.sources.synth.workers import FileTask, Job, run_tasks
from okkhor.utils.files import atomic_path

OUTPUT_NAMES = ("train.csv", "test.csv", "test_labels.csv", "class_map.csv", "sample_submission.csv")


def _labels_frame(split: str, samples: list[Sample], draws: list[Draw], fonts: Sequence[FontSpec],
                  seen: bool = False) -> pd.DataFrame:
    columns: dict[str, list] = {"image_id": [f"{split.capitalize()}_{i}" for i in range(len(samples))]}
    columns.update({name: [s.triple[t] for s in samples] for t, name in enumerate(TARGETS)})
    columns["grapheme"] = [s.grapheme for s in samples]
    if seen:
        columns["seen"] = [s.seen for s in samples]
    columns["font"] = [fonts[d.face].family for d in draws]
    columns["font_seen"] = [d.font_seen for d in draws]
    return pd.DataFrame(columns)


def _write_label_files(out_dir: Path, samples: dict[str, list[Sample]], draws: dict[str, list[Draw]],
                       fonts: Sequence[FontSpec]) -> None:
    write_split_csvs(out_dir, "train", _labels_frame("train", samples["train"], draws["train"], fonts), TARGETS)
    write_split_csvs(out_dir, "test", _labels_frame("test", samples["test"], draws["test"], fonts, seen=True),
                     TARGETS)
    with atomic_path(out_dir / "class_map.csv") as tmp:
        tmp.write_bytes(resources.files("okkhor.resources").joinpath("class_map.csv").read_bytes())


def _existing_outputs(out_dir: Path) -> list[Path]:
    found = [out_dir / n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    return found + image_parquet_files(out_dir, "train") + image_parquet_files(out_dir, "test")


def _file_tasks(out_dir: Path, samples: dict[str, list[Sample]], draws: dict[str, list[Draw]],
                rows_per_file: int | None) -> list[FileTask]:
    tasks: list[FileTask] = []
    for split, items in samples.items():
        begin = 0
        for index, rows in enumerate(file_rows(len(items), rows_per_file)):
            texts = tuple(s.grapheme for s in items[begin:begin + rows])
            tasks.append(FileTask(split, begin, texts, tuple(draws[split][begin:begin + rows]),
                                  str(out_dir / image_file_name(split, index))))
            begin += rows
    return tasks


def _check_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """The dataset files already in `out_dir` (to replace); OkkhorError when there are some and not `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OkkhorError(f"{out_dir}: exists and is not a folder")
    existing = _existing_outputs(out_dir) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise OkkhorError(f"{out_dir}: already holds a dataset ({existing[0].name}); pass --overwrite to replace it")
    return existing


def _faces(fonts: Sequence[str] | str | None, fonts_dir: str | Path | None,
           holdout_fonts: Sequence[str] | str | None) -> tuple[list[FontSpec], list[int], list, list[str]]:
    """(faces, held-out face indices, self-checked renderers, warnings on the rejected --fonts-dir files)."""
    from okkhor.sources.synth.shaping import self_check_fonts  # the synth extra

    user_fonts, font_warnings = ([], []) if fonts_dir is None else load_font_dir(
        fonts_dir, taken=[f.name for f in discover_fonts()[0]])
    specs = select_fonts(fonts, extra=user_fonts)
    held = holdout_faces(specs, holdout_fonts)
    return specs, held, self_check_fonts(specs), font_warnings


def _listed(graphemes: str | Path | None, missing_from: str | Path | None, missing: str | None,
            fractions: tuple[float, float]) -> list[Listed] | None:
    """The triples to draw from when a list is given (--graphemes FILE or --missing-from DATA), else None."""
    if missing is not None and missing_from is None:
        raise OkkhorError("missing needs missing-from (the data dir whose train.csv is read)")
    if graphemes is None and missing_from is None:
        return None
    if graphemes is not None and missing_from is not None:
        raise OkkhorError("graphemes and missing-from cannot be combined: give one list of triples")
    if any(fractions):
        raise OkkhorError("unseen-test-fraction and train-unseen-fraction do not apply to a list of triples "
                          "(graphemes or missing-from): the list decides which triples are drawn")
    if graphemes is not None:
        return read_grapheme_list(graphemes)
    return missing_triples(missing_from, "triples" if missing is None else missing)


def _summary(out_dir: Path, samples: dict[str, list[Sample]], draws: dict[str, list[Draw]], specs: list[FontSpec],
             held: list[int], tasks: list[FileTask], workers: int, seconds: float) -> dict:
    n = sum(len(items) for items in samples.values())
    return {
        "out_dir": str(out_dir),
        "train": len(samples["train"]), "test": len(samples["test"]),
        "train_unseen": sum(not s.seen for s in samples["train"]),
        "test_unseen": sum(not s.seen for s in samples["test"]),
        "test_font_unseen": sum(not d.font_seen for d in draws["test"]),
        "holdout_fonts": list(dict.fromkeys(specs[i].family for i in held)),
        "hand_images": sum(d.hand for split in draws.values() for d in split),
        "files": [Path(t.path).name for t in tasks],
        "fonts": [f.name for f in specs],
        "font_notes": list(discover_fonts()[1]),
        "workers": min(workers, len(tasks)),
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
    }


def synthesize(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0, unseen_test_fraction: float = 0.0,
               train_unseen_fraction: float = 0.0, fonts: Sequence[str] | str | None = None,
               workers: int | None = None, preview: str | Path | None = None,
               rows_per_file: int | None = None, overwrite: bool = False,
               variation: Variation | None = None, progress: bool = True,
               holdout_fonts: Sequence[str] | str | None = None, holdout_share: float | None = None,
               fonts_dir: str | Path | None = None, style: str = "mix", hand: HandStyle | None = None,
               graphemes: str | Path | None = None, missing_from: str | Path | None = None,
               missing: str | None = None, shape: ShapeStyle | None = None) -> dict:
    """Write a synthetic dataset in the competition's format into `out_dir` and return a summary.

    Files: train.csv, train_image_data_<i>.parquet, test.csv, test_image_data_<i>.parquet, class_map.csv,
    sample_submission.csv and test_labels.csv (labels, grapheme and `seen` for local scoring); train.csv and
    test_labels.csv also name each image's font family (`font`) and whether train uses it (`font_seen`). The
    same seed gives byte-identical files whatever `workers` is. Unseen triples of test never occur in train.

    `holdout_fonts`: font families train never uses; test images are drawn in them (all of them, or a share
    `holdout_share`, the rest in the train families). `fonts_dir`: a folder of the user's own .ttf/.otf files,
    added to the shipped fonts (files that are unusable are left out, each with a warning in the summary).
    `style`: `font` (a font's outline, distorted), `hand` (see Imager) or `mix` (each image's own choice).
    `shape`: the hand style's letter-shape steps (okkhor.sources.synth.shape; None or all chances 0: off, and
    the files are those made without it).

    A list of triples replaces the usual labels (train graphemes plus unseen triples): `graphemes`, a CSV file
    (see labels.read_grapheme_list), or `missing_from`, a data dir: the triples of the grapheme list its
    train.csv lacks, or with `missing="roots"` every triple of the grapheme list whose root it lacks. Each split
    then draws its images evenly over the list, each triple once before any twice.
    """
    start = time.perf_counter()
    n_train = check_count("train", n_train)
    n_test = check_count("test", n_test)
    if n_train + n_test == 0:
        raise OkkhorError("nothing to make: --train and --test are both 0")
    seed = check_count("seed", seed, 0, 2**63 - 1)
    preview = None if preview is None else check_preview(preview)
    unseen_test_fraction = check_fraction("unseen-test-fraction", unseen_test_fraction)
    train_unseen_fraction = check_fraction("train-unseen-fraction", train_unseen_fraction)
    if holdout_share is not None:
        holdout_share = check_fraction("holdout-share", holdout_share)
        if holdout_fonts is None:
            raise OkkhorError("holdout-share needs holdout-fonts (the families to hold out)")
    listed = _listed(graphemes, missing_from, missing, (unseen_test_fraction, train_unseen_fraction))
    style = check_style(style)
    if shape is not None and not isinstance(shape, ShapeStyle):
        raise OkkhorError(f"shape must be a ShapeStyle or None, got {type(shape).__name__}")
    shape = shape if shape is not None and shape.active else None
    if shape is not None and style == "font":
        raise OkkhorError("--shape changes hand-style images only: use it with --style hand or mix")
    if rows_per_file is not None:
        rows_per_file = check_count("rows-per-file", rows_per_file, 1, MAX_ROWS_PER_FILE)
    workers = (os.cpu_count() or 1) if workers is None else check_count("workers", workers, 1)
    variation = Variation() if variation is None else variation
    hand = HandStyle() if hand is None else hand
    out_dir = Path(out_dir)
    existing = _check_out_dir(out_dir, overwrite)

    specs, held, renderers, font_warnings = _faces(fonts, fonts_dir, holdout_fonts)
    if listed is None:
        samples = {"train": sample_labels("train", n_train, train_unseen_fraction, seed),
                   "test": sample_labels("test", n_test, unseen_test_fraction, seed)}
    else:
        samples = {split: listed_samples(split, n, seed, listed) for split, n in (("train", n_train), ("test", n_test))}
    share = 1.0 if holdout_share is None else holdout_share
    draws = {split: plan_draws(split, items, seed, renderers, held, share, style)
             for split, items in samples.items()}
    tasks = _file_tasks(out_dir, samples, draws, rows_per_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in existing:  # only our own file names, and only with overwrite
        stale.unlink()
    run_tasks(tasks, Job(seed, tuple(specs), variation, hand, shape), workers, n_train + n_test, progress)
    _write_label_files(out_dir, samples, draws, specs)
    seconds = time.perf_counter() - start
    if preview is not None:
        write_preview(preview, samples, seed, fonts=specs, variation=variation, draws=draws, hand=hand, shape=shape)
    return {**_summary(out_dir, samples, draws, specs, held, tasks, workers, seconds), "style": style,
            "font_warnings": font_warnings, "variation": asdict(variation), "hand": asdict(hand),
            "shape": None if shape is None else asdict(shape),
            "listed_triples": None if listed is None else len(listed)}
