"""Evaluation of a checkpoint on its validation fold or a labelled test set: metrics.json and plots."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from okkhor.data.folds import check_same_data, folds_fingerprint, read_folds
from okkhor.data.prepare import PrepareOptions, default_cache_dir, load_cache, prepare_split
from okkhor.errors import OkkhorError
from okkhor.inference.predict import (
    Member,
    check_data_targets,
    check_route,
    class_priors,
    decide,
    ensemble_probs,
    load_members,
    routed_labels,
    stream_test_probs,
)
from okkhor.inference.scoring import group_columns
from okkhor.io import checkpoint
from okkhor.io.kaggle import image_parquet_files
from okkhor.io.labels import load_targets, read_train_labels, write_submission
from okkhor.metrics import by_groups, per_class_recall, summary
from okkhor.models.graphemes import ABSENT, GRAPHEME, grapheme_index, seen_auroc, seen_score
from okkhor.targets import Targets
from okkhor.utils.files import atomic_path, check_writable, write_csv_atomic, write_text_atomic

TOP_PAIRS = 20


@dataclass
class EvaluationResult:
    """Predictions and metrics of one checkpoint on a labelled set."""

    checkpoint: Path
    source: str                      # "fold K" or the labels file
    targets: Targets
    image_ids: list[str]
    y_true: np.ndarray               # int64 [n, T]
    y_pred: np.ndarray               # int64 [n, T]
    probs: dict[str, np.ndarray]     # {target: float32 [n, C]}
    metrics: dict[str, Any]          # what metrics.json holds
    images: np.ndarray | None = None  # the preprocessed images [N, H, W] (cache memory map), fold mode only
    rows: np.ndarray | None = None    # row in `images` of each evaluated image

    def image(self, i: int) -> np.ndarray | None:
        """The preprocessed image (uint8 [H, W], bright ink on black) of evaluated sample i, when known."""
        if self.images is None or self.rows is None:
            return None
        return np.asarray(self.images[int(self.rows[i])])


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts [true, pred]."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, top: int = TOP_PAIRS) -> list[dict]:
    """The most frequent mistakes (true != pred), most first: [{"true", "pred", "count", "share"}]."""
    cm = confusion(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    np.fill_diagonal(cm, 0)
    flat = np.flatnonzero(cm)
    # most first; ties by (true, pred) so the order is deterministic
    order = sorted(flat, key=lambda k: (-cm.flat[k], k))[:top]
    return [{"true": int(k // num_classes), "pred": int(k % num_classes), "count": int(cm.flat[k]),
             "share": float(cm.flat[k] / support[k // num_classes])} for k in order]


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def summarize(y_true: np.ndarray, y_pred: np.ndarray, targets: Targets, top_pairs: int = TOP_PAIRS,
              groups: dict[str, np.ndarray] | None = None) -> dict:
    """metrics.summary() ({"images", "score", "recall", "accuracy", "exact"}) plus "per_class_recall": {t: [r | None]},
    "support", "confused_pairs", and metrics.by_groups()'s "by_seen" / "by_cell" for the `groups` given."""
    out: dict[str, Any] = {**summary(y_true, y_pred, targets), "per_class_recall": {}, "support": {},
                           "confused_pairs": {}, **by_groups(y_true, y_pred, targets, groups or {})}
    for t, (name, n) in enumerate(zip(targets.names, targets.num_classes, strict=False)):
        out["per_class_recall"][name] = _nan_to_none(per_class_recall(y_true[:, t], y_pred[:, t], n))
        out["support"][name] = np.bincount(y_true[:, t], minlength=n).astype(int).tolist()
        out["confused_pairs"][name] = confused_pairs(y_true[:, t], y_pred[:, t], n, top_pairs)
    return out


def _fold_set(member: Member, data_dir: Path, fold: int, show_progress: bool, records: list[dict]):
    """(image ids, labels, cache images, rows, group columns) of the validation fold, from the prepare cache (built
    when missing and the train parquet files are there). `records`: the data records the folds must match (one, or
    with several sources whose dirs did not match, any one of them)."""
    targets = member.targets
    df, labels_all = read_train_labels(data_dir / "train.csv", targets)
    folds_csv = data_dir / "folds.csv"
    if not folds_csv.is_file():
        raise OkkhorError(f"{folds_csv}: file not found (run `okkhor split {data_dir}`)")
    size, crop = member.preprocessing
    opts = PrepareOptions(size=size, crop=crop)
    cache_dir = default_cache_dir(data_dir, opts)
    if image_parquet_files(data_dir, "train"):     # else a cache prepared earlier must be there
        prepare_split(data_dir, "train", opts, cache_dir, show_progress=show_progress)
    images, cache_ids = load_cache(cache_dir, "train")
    folds = read_folds(folds_csv, cache_ids)
    current = {"folds": folds_fingerprint(cache_ids, folds)}
    if len(records) > 1 and not any(r.get("folds") == current["folds"] for r in records):
        names = ", ".join(str(r.get("name")) for r in records)
        raise OkkhorError(f"{data_dir}: is none of the sources {member.path} was trained on ({names}); evaluate a "
                          "source's fold with --source NAME, or a labelled set with --labels")
    check_same_data(records[0] if len(records) == 1 else current, current, member.path, folds_csv,
                    use="evaluate with the folds.csv of training, or on a labelled set with --labels")
    rows = np.flatnonzero(folds == fold)
    if len(rows) == 0:
        raise OkkhorError(f"{folds_csv}: fold {fold} has no images (folds present: "
                          f"{', '.join(map(str, sorted(set(folds.tolist()))))})")
    label_row = {image_id: i for i, image_id in enumerate(df["image_id"].astype(str))}
    ids = [cache_ids[r] for r in rows]
    missing = [i for i in ids if i not in label_row]
    if missing:
        raise OkkhorError(f"{data_dir / 'train.csv'}: no labels for cached image {missing[0]}; rerun "
                          f"`okkhor prepare {data_dir}`")
    take = [label_row[i] for i in ids]
    return ids, labels_all[take], images, rows, group_columns(df.iloc[take], data_dir / "train.csv")


def checkpoint_sources(ckpt: str | Path) -> list[dict]:
    """The data sources a checkpoint's run read (okkhor.io.checkpoint.source_records)."""
    return checkpoint.source_records(checkpoint.load(ckpt))


def _source_data(member: Member, data_dir: str | Path | None, source: str | None,
                 labels: str | Path | None) -> tuple[Path, list[dict], str]:
    """(data dir, the data records its folds must match, the source's name or "") of an evaluation: --source names
    a source of the checkpoint (its recorded dir unless --data is given); no --data: the checkpoint's one data dir."""
    recorded = checkpoint.source_records(member.meta)
    names = ", ".join(r["name"] for r in recorded)
    if source is not None:
        if labels is not None:
            raise OkkhorError("--source and --labels exclude each other (a source is evaluated on its valid fold)")
        match = [r for r in recorded if r["name"] == source]
        if not match:
            raise OkkhorError(f"--source {source}: not a source of {member.path} ({names or 'it records none'})")
        return Path(data_dir or match[0]["dir"]), match, source
    if data_dir is None:
        if labels is not None or not recorded:
            raise OkkhorError(f"{member.path}: pass --data DATA_DIR (" + ("the test images of --labels)" if labels
                              else "the checkpoint does not record the data it read)"))
        if len(recorded) > 1:
            raise OkkhorError(f"{member.path}: trained on several sources ({names}); pass --source NAME or --data")
        return Path(recorded[0]["dir"]), [member.meta.get(checkpoint.DATA) or {}], ""
    if len(recorded) < 2:
        return Path(data_dir), [member.meta.get(checkpoint.DATA) or {}], ""
    here = Path(data_dir).resolve()
    match = [r for r in recorded if Path(r["dir"]).resolve() == here]
    return Path(data_dir), match or recorded, match[0]["name"] if match else ""


def evaluate(ckpt: str | Path, data_dir: str | Path | None = None, fold: int | None = None,
             labels: str | Path | None = None, out: str | Path | None = None, tta: int = 1, batch_size: int = 128,
             prior_correction: bool = False, device: str = "auto", top_pairs: int = TOP_PAIRS,
             show_progress: bool = True, route: bool = False, route_threshold: float = 0.5,
             source: str | None = None) -> EvaluationResult:
    """Predict a labelled set with one checkpoint and score it.

    Without `labels`: the validation fold `fold` (default: the checkpoint's data.fold) of DATA_DIR/train.csv, images
    from the prepare cache at the checkpoint's preprocessing. With `labels` (image_id + one column per target): the
    listed images, read from DATA_DIR's test parquet files. When `out` is given, writes the files of
    `write_evaluation` there. `route` decides as `okkhor predict --route` does. A checkpoint with a grapheme head
    adds grapheme_head_metrics() to the metrics.
    DATA_DIR None: the data dir the checkpoint's run read. A checkpoint of several sources: `source` names the one
    whose fold is evaluated (its recorded dir unless DATA_DIR is given), or DATA_DIR must be one of them.
    """
    if labels is not None and fold is not None:
        raise OkkhorError("--fold and --labels exclude each other")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    if out is not None:
        check_writable(out, "output folder", folder=True)
    (member,) = load_members([ckpt], device)
    data_dir, records, name = _source_data(member, data_dir, source, labels)
    if not data_dir.is_dir():
        raise OkkhorError(f"{data_dir}: data directory not found")
    check_data_targets([member], data_dir)
    if route:
        check_route([member], route_threshold)
    targets = with_components(member.targets, data_dir, member.cfg.data.class_map)
    images = rows = None
    if labels is None:
        fold = member.cfg.data.fold if fold is None else fold
        source = f"fold {fold}" + (f" of {name}" if name else "")
        ids, y_true, images, rows, groups = _fold_set(member, data_dir, fold, show_progress, records)
        probs = ensemble_probs([member], {member.preprocessing: images}, tta=tta, batch_size=batch_size, rows=rows)
    else:
        source = str(labels)
        df, y_true = read_train_labels(labels, targets)
        groups = group_columns(df, Path(labels))
        ids = df["image_id"].astype(str).tolist()
        test_ids, test_probs = stream_test_probs([member], data_dir, tta=tta, batch_size=batch_size,
                                                 show_progress=show_progress)
        index = {image_id: i for i, image_id in enumerate(test_ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise OkkhorError(f"{labels}: image {missing[0]} is in no test parquet file of {data_dir} "
                              f"({len(missing)} missing)")
        take = np.array([index[i] for i in ids], dtype=np.int64)
        probs = {name: p[take] for name, p in test_probs.items()}
    if len(ids) == 0:
        raise OkkhorError(f"{source}: no images to evaluate")
    priors = class_priors([member], data_dir) if prior_correction else None
    chosen = decide(probs, priors)
    routed = None
    if route:
        chosen, sure = routed_labels([member], probs, chosen, route_threshold)
        routed = int(sure.sum())
    y_pred = np.stack([chosen[name] for name in targets.names], axis=1)
    metrics = {"checkpoint": str(ckpt), "source": source, "tta": tta, "prior_correction": prior_correction,
               "routed": routed, **summarize(y_true, y_pred, targets, top_pairs, groups)}
    if GRAPHEME in probs:
        metrics["grapheme_head"] = grapheme_head_metrics(probs[GRAPHEME], member.graphemes, y_true, groups)
    ev = EvaluationResult(Path(ckpt), source, targets, ids, y_true, y_pred, probs, metrics, images, rows)
    if out is not None:
        write_evaluation(ev, out)
    return ev


def grapheme_head_metrics(grapheme_probs: np.ndarray, classes: np.ndarray, y_true: np.ndarray,
                          groups: dict[str, np.ndarray]) -> dict[str, Any]:
    """How the grapheme head's seen score (maximum softmax) separates graphemes:

    "seen_auroc": against the labels' `seen` column (None without one, or with one kind only);
    "known_auroc": against whether the true triple is one of the head's classes; "known_accuracy": the head's
    accuracy on the images whose triple it knows (None when none).
    """
    score = seen_score(grapheme_probs)
    index = grapheme_index(y_true, classes)
    known = index != ABSENT
    hits = grapheme_probs.argmax(axis=1) == index
    return {"classes": int(len(classes)),
            "seen_auroc": seen_auroc(groups["seen"], score) if "seen" in groups else None,
            "known_auroc": seen_auroc(known, score),
            "known_accuracy": float(hits[known].mean()) if known.any() else None}


def default_out_dir(ckpt: str | Path) -> Path:
    """RUN_DIR/eval-<name> for RUN_DIR/checkpoints/<name>.pt, else eval-<name> beside the checkpoint."""
    ckpt = Path(ckpt)
    base = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return base / f"eval-{ckpt.stem}"


def write_evaluation(ev: EvaluationResult, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, truth.csv + submission.csv (so `okkhor score --truth truth.csv --submission
    submission.csv` reproduces the score), class_map.csv (the targets scored) and the PNG plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ev.targets.names
    files = {"metrics": out / "metrics.json", "truth": out / "truth.csv", "submission": out / "submission.csv",
             "class_map": out / "class_map.csv"}
    write_text_atomic(files["metrics"], json.dumps(ev.metrics, indent=1, ensure_ascii=False))
    truth = pd.DataFrame({"image_id": ev.image_ids, **{n: ev.y_true[:, t] for t, n in enumerate(names)}})
    write_csv_atomic(files["truth"], truth)
    write_submission(files["submission"], [f"{i}_{n}" for i in ev.image_ids for n in names], ev.y_pred.ravel())
    write_csv_atomic(files["class_map"], pd.DataFrame(
        [(n, k, _component(ev.targets, n, k))
         for n, c in zip(names, ev.targets.num_classes, strict=True) for k in range(c)],
        columns=["component_type", "label", "component"]))
    files.update(write_plots(ev.metrics, ev.targets, out))
    return files


def _component(targets: Targets, name: str, k: int) -> str:
    comps = targets.components.get(name, ())
    return comps[k] if k < len(comps) else str(k)


def with_components(targets: Targets, data_dir: Path, class_map: str = "") -> Targets:
    """The targets with the component strings of the data dir's class map (where names and class counts agree)."""
    try:
        full = load_targets(data_dir, class_map)
    except OkkhorError:
        return targets
    comps = {n: full.components[n] for n, c in zip(targets.names, targets.num_classes, strict=False)
             if len(full.components.get(n, ())) == c}
    return Targets.make(targets.names, targets.num_classes, targets.weights, comps)


def figure(width: float, height: float):
    """A matplotlib Figure drawn with Agg, outside pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_per_class_recall(name: str, recall: list[float | None], support: list[int], macro: float,
                          path: Path) -> Path:
    """Bars of recall per class present in the set, worst first, with the macro mean as a line."""
    present = [(k, r) for k, r in enumerate(recall) if r is not None]
    present.sort(key=lambda kr: (kr[1], kr[0]))
    n = max(len(present), 1)
    fig = figure(min(max(5.5, 0.09 * n + 2.0), 18.0), 3.2)
    ax = fig.add_subplot()
    values = [r for _, r in present]
    # a sliver for recall 0, so a class that is never right still shows a bar
    ax.bar(range(len(present)), [max(v, 0.006) for v in values], color=[_recall_colour(v) for v in values],
           width=0.8)
    ax.axhline(macro, color="#333333", linewidth=1, linestyle="--", label=f"macro recall {macro:.4f}")
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels([str(k) for k, _ in present], rotation=90, fontsize=7 if n <= 40 else 5)
    ax.set_xlim(-0.6, len(present) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("recall")
    ax.set_xlabel("class (worst first)")
    ax.set_title(f"{name}: {len(present)} classes, {sum(support)} images", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _recall_colour(r: float) -> str:
    return "#c0392b" if r < 0.5 else "#e67e22" if r < 0.8 else "#2e86c1"


def plot_confused_pairs(name: str, pairs: list[dict], path: Path) -> Path:
    """Horizontal bars of the most frequent (true -> predicted) mistakes."""
    fig = figure(5.5, max(1.6, 0.22 * len(pairs) + 0.9))
    ax = fig.add_subplot()
    if pairs:
        ax.barh(range(len(pairs)), [p["count"] for p in pairs], color="#8e44ad")
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels([f"{p['true']} \u2192 {p['pred']}" for p in pairs], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("images")
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"{name}: most confused (true \u2192 predicted)", fontsize=10)
    return save_figure(fig, path)


def write_plots(metrics: dict, targets: Targets, out: Path) -> dict[str, Path]:
    """recall_<target>.png and confusion_<target>.png for each target."""
    files: dict[str, Path] = {}
    for name in targets.names:
        files[f"recall_{name}"] = plot_per_class_recall(
            name, metrics["per_class_recall"][name], metrics["support"][name], metrics["recall"][name],
            out / f"recall_{name}.png")
        files[f"confusion_{name}"] = plot_confused_pairs(name, metrics["confused_pairs"][name],
                                                         out / f"confusion_{name}.png")
    return files
