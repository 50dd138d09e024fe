"""Cross-validation: one training run per fold under RUNS/fold<k>/, out-of-fold (OOF) probabilities and scores.

RUNS/ holds:
  fold<k>/      an ordinary run directory (okkhor.training.train) per fold; a finished fold is skipped, an unfinished
                one resumed from its last.pt
  oof.npz       image_ids, fold (the fold that held each image out) and one float32 [n, C] array per target: the
                softmax of that fold's best.pt on its validation images, in fold order
  cv.csv        fold,images,score,recall_<target>...,best_epoch: one row per fold (its best.pt on its validation
                fold), then the row `oof`: the score of the OOF predictions over all of them

With several data sources every fold run reads them all (fold k of each is held out) and is evaluated on each
source's fold k: cv.csv begins with a `source` column and holds the rows above for each source in turn, and
oof.npz adds `source` (each image's source name; image ids are unique within a source only).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from okkhor.config import Config
from okkhor.data.sets import Source, resolve_sources
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.targets import Targets
from okkhor.utils.files import atomic_path, write_csv_atomic

FOLD_DIR = "fold{}"
OOF_FILE = "oof.npz"
CV_FILE = "cv.csv"
OOF_ROW = "oof"
_FOLD_RE = re.compile(r"^fold(\d+)$")


def parse_folds(text: str | None, n_folds: int) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (None: every fold of data.folds); a bad or out-of-range fold is one clear error."""
    if text is None or not str(text).strip():
        return list(range(n_folds))
    try:
        folds = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise OkkhorError(f"--folds {text!r}: expected comma-separated fold numbers, e.g. 0,1,2") from None
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad or not folds:
        raise OkkhorError(f"--folds {text!r}: folds must be in 0..{n_folds - 1} (data.folds={n_folds})")
    if len(set(folds)) != len(folds):
        raise OkkhorError(f"--folds {text!r}: a fold is listed twice")
    return folds


def fold_dirs(runs_dir: str | Path) -> dict[int, Path]:
    """{k: RUNS/fold<k>} of the fold run directories under RUNS, by fold number."""
    runs_dir = Path(runs_dir)
    found = {}
    if runs_dir.is_dir():
        for child in runs_dir.iterdir():
            match = _FOLD_RE.match(child.name)
            if match and child.is_dir():
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def is_cv_dir(path: str | Path) -> bool:
    """A cross-validation folder: fold<k>/ run directories, and no run of its own."""
    path = Path(path)
    return path.is_dir() and not (path / "checkpoints").is_dir() and bool(fold_dirs(path))


def checkpoints_of(path: str | Path) -> list[Path]:
    """The checkpoints a path stands for: a file is itself; a cv folder, every fold's checkpoints/best.pt; a run
    directory, its checkpoints/best.pt. A folder without them is one clear error."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    if is_cv_dir(path):
        best = [d / "checkpoints" / "best.pt" for d in fold_dirs(path).values()]
        missing = [p for p in best if not p.is_file()]
        if missing:
            raise OkkhorError(f"{missing[0]}: not found; finish that fold with `okkhor cv` first")
        return best
    best = path / "checkpoints" / "best.pt"
    if not best.is_file():
        raise OkkhorError(f"{path}: a folder with neither checkpoints/best.pt nor fold<k>/ runs")
    return [best]



DataDirs = Union[str, Path, Sequence[Union[str, Path]], None]


def cv_columns(targets: Targets, several: bool = False) -> list[str]:
    return [*(["source"] if several else []), "fold", "images", "score", *[f"recall_{n}" for n in targets.names],
            "best_epoch"]


def run_cv(data_dir: DataDirs, runs_dir: str | Path, cfg: Config, folds: Sequence[int] | None = None, *,
           show_progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train every fold in `folds` (default all of data.folds) into RUNS/fold<k>/, then write oof.npz and cv.csv.
    DATA_DIR may be several sources (None: data.sources).

    Returns {"folds": {k: score}, "oof_score", "images", "oof", "csv"}; with several sources these are the first
    source's (train.select_on's), and "sources" holds {name: {"folds", "oof_score", "images"}} for each.
    """
    from okkhor.training.train import train

    sources, runs_dir = resolve_sources(data_dir, cfg), Path(runs_dir)
    folds = list(range(cfg.data.folds)) if folds is None else list(folds)
    for k in folds:
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.data.fold = k
        out = runs_dir / FOLD_DIR.format(k)
        last = out / "checkpoints" / "last.pt"
        if last.is_file() and checkpoint.is_finished(checkpoint.load_for_resume(last), cfg.train.epochs):
            log(f"cv: fold {k} has finished ({last}); skipped")
            continue
        resume = last.is_file()
        log(f"cv: fold {k}{' (resuming)' if resume else ''} -> {out}")
        train([s.dir for s in sources], out, fold_cfg, resume=resume, show_progress=show_progress, log=log)
    return write_oof(runs_dir, sources if len(sources) > 1 else sources[0].dir, folds, show_progress=show_progress,
                     log=log, select_on=cfg.train.select_on)


def write_oof(runs_dir: Path, data_dir: Union[Path, Sequence[Source]], folds: Sequence[int], *,
              show_progress: bool = False, log: Callable[[str], None] = print, select_on: str = "") -> dict:
    """Predict each fold's validation images with its best.pt (each source's, given several); write oof.npz and
    cv.csv; log the OOF score."""
    if isinstance(data_dir, (str, Path)):
        table, oof, total = _oof(runs_dir, Path(data_dir), folds, None, show_progress)
        return _write(runs_dir, table, oof, total, log)
    parts = {s.name: _oof(runs_dir, s.dir, folds, s.name, show_progress) for s in data_dir}
    table = pd.concat([rows.assign(source=name)[["source", *rows.columns]] for name, (rows, _, _) in parts.items()],
                      ignore_index=True)
    arrays = [a for _, a, _ in parts.values()]
    oof = {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}
    oof["source"] = np.concatenate([np.full(len(a["image_ids"]), name) for name, a in zip(parts, arrays, strict=True)])
    select = select_on or next(iter(parts))
    result = _write(runs_dir, table, oof, parts[select][2], log, select)
    result["sources"] = {name: {"folds": _fold_scores(rows), "oof_score": total["score"], "images": total["images"]}
                         for name, (rows, _, total) in parts.items()}
    return result


def _fold_scores(table: pd.DataFrame) -> dict:
    return {int(r["fold"]): float(r["score"]) for _, r in table.iterrows() if str(r["fold"]) != OOF_ROW}


def _write(runs_dir: Path, table: pd.DataFrame, oof: dict, total: dict, log: Callable[[str], None],
           source: str = "") -> dict:
    """Write oof.npz and cv.csv; log and return the OOF score (`source`'s, with several)."""
    oof_path, csv_path = runs_dir / OOF_FILE, runs_dir / CV_FILE
    with atomic_path(oof_path) as tmp:
        np.savez_compressed(tmp, **oof)
    write_csv_atomic(csv_path, table)
    rows = table[table["source"] == source] if source else table
    scores = _fold_scores(rows)
    log(f"cv: OOF score {total['score']:.4f}{f' on {source}' if source else ''} over {total['images']} images "
        f"(folds {', '.join(f'{k} {s:.4f}' for k, s in scores.items())}); wrote {oof_path} and {csv_path}")
    return {"folds": scores, "oof_score": total["score"], "images": total["images"], "oof": oof_path,
            "csv": csv_path}


def _oof(runs_dir: Path, data_dir: Path, folds: Sequence[int], source: Optional[str],
         show_progress: bool) -> tuple[pd.DataFrame, dict, dict]:
    """(the cv.csv rows, the oof.npz arrays, the OOF summary) of one data dir: each fold's best.pt on its fold."""
    from okkhor.inference.evaluate import evaluate
    from okkhor.metrics import summary

    rows, ids, fold_of, y_true, probs, targets = [], [], [], [], {}, None
    for k in folds:
        best = runs_dir / FOLD_DIR.format(k) / "checkpoints" / "best.pt"
        ev = evaluate(best, data_dir, fold=k, show_progress=show_progress, source=source)
        if targets is not None and ev.targets.names != targets.names:
            raise OkkhorError(f"{best}: predicts {', '.join(ev.targets.names)}, other folds "
                              f"{', '.join(targets.names)}")
        targets = ev.targets
        best_epoch = checkpoint.best_epoch(checkpoint.load(best))
        m = ev.metrics
        rows.append({"fold": k, "images": m["images"], "score": m["score"],
                     **{f"recall_{n}": r for n, r in m["recall"].items()}, "best_epoch": best_epoch})
        ids.extend(ev.image_ids)
        fold_of.extend([k] * len(ev.image_ids))
        y_true.append(ev.y_true)
        for name in targets.names:   # the targets only: grapheme-head classes differ from fold to fold
            probs.setdefault(name, []).append(ev.probs[name])
    oof = {name: np.concatenate(p) for name, p in probs.items()}
    truth = np.concatenate(y_true)
    pred = np.stack([oof[name].argmax(axis=1) for name in targets.names], axis=1)
    total = summary(truth, pred, targets)
    rows.append({"fold": OOF_ROW, "images": total["images"], "score": total["score"],
                 **{f"recall_{n}": r for n, r in total["recall"].items()}, "best_epoch": None})
    table = pd.DataFrame(rows, columns=cv_columns(targets))
    table["best_epoch"] = table["best_epoch"].astype("Int64")   # empty in the oof row
    arrays = {"image_ids": np.asarray(ids, dtype=str), "fold": np.asarray(fold_of, dtype=np.int64), **oof}
    return table, arrays, total


def read_cv(runs_dir: str | Path) -> pd.DataFrame:
    """RUNS/cv.csv (one row per fold, then the oof row); one clear error when missing or malformed."""
    from okkhor.io.labels import read_csv_checked

    return read_csv_checked(Path(runs_dir) / CV_FILE, ["fold", "images", "score"], "cv CSV")


def cv_report_lines(runs_dir: str | Path) -> list[str]:
    """Text table of cv.csv: one line per fold and the OOF score."""
    df = read_cv(runs_dir)
    recalls = [c for c in df.columns if c.startswith("recall_")]
    first = "source" in df.columns   # several sources: a source column first
    lines = [f"{'source  ' if first else ''}{'fold':>5} {'images':>7} {'score':>7} "
             + " ".join(f"{c[len('recall_'):]:>20}" for c in recalls)]
    for _, row in df.iterrows():
        lines.append(f"{str(row['source']) + '  ' if first else ''}{str(row['fold']):>5} {int(row['images']):>7} "
                     f"{float(row['score']):>7.4f} " + " ".join(f"{float(row[c]):>20.4f}" for c in recalls))
    return lines


def write_cv_report(runs_dir: str | Path) -> Path:
    """RUNS/report.html: the cv.csv table (one row per fold, the OOF score) with a link to each fold's report."""
    import html

    from okkhor.utils.files import write_text_atomic

    runs_dir = Path(runs_dir)
    df = read_cv(runs_dir)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = "".join(f"<td>{'' if pd.isna(v) else (f'{v:.4f}' if isinstance(v, float) else html.escape(str(v)))}"
                        "</td>" for v in row.to_numpy())
        body.append(f"<tr>{cells}</tr>")
    oof = df[df["fold"].astype(str) == OOF_ROW]
    score = f"{float(oof['score'].iloc[0]):.4f}" if len(oof) else "n/a"
    links = " ".join(f"<a href='{d.name}/report.html'>{d.name}</a>" for d in fold_dirs(runs_dir).values()
                     if (d / "report.html").is_file())
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>okkhor cv: "
            f"{html.escape(runs_dir.resolve().name)}</title></head><body><h1>okkhor cross-validation: "
            f"{html.escape(runs_dir.resolve().name)}</h1><p>OOF score <b>{score}</b> ({OOF_FILE})</p>"
            f"<table border='1' cellpadding='4'><tr>{head}</tr>{''.join(body)}</table>"
            f"{f'<p>fold reports: {links}</p>' if links else ''}</body></html>\n")
    path = runs_dir / "report.html"
    write_text_atomic(path, page)
    return path
