"""The run report: one offline HTML page with training curves, per-class recall, confusions and mistakes."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from okkhor.bengali import grapheme_string, is_bengali
from okkhor.errors import OkkhorError
from okkhor.io import checkpoint
from okkhor.utils.files import atomic_path, write_text_atomic

REPORT_DIR = "report"        # RUN_DIR/report/: the images (and evaluation files) the page shows
GALLERY = 48                 # misclassified images shown at most
TILE = 96                    # side of each picture in a gallery tile
WORST_ROOTS = 16             # worst classes listed with their glyphs

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} img{max-width:100%} .note{color:#777;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:10px} .tile{border:1px solid #ddd;padding:4px;font-size:12px;width:300px}
.bad{color:#c0392b;font-weight:bold} .pairs{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
img.glyph{height:40px;vertical-align:middle;border:1px solid #eee}
pre{background:#f8f8f8;padding:8px;font-size:12px;overflow:auto}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def resolve_data_dir(run_dir: Path, data_dir: str | Path | None, ckpt: dict | None) -> Path:
    """--data, else the data dir the checkpoint's run read (okkhor.io.checkpoint.data_dir), else RUN_DIR/run.json's;
    one clear error when none is known."""
    read = checkpoint.data_dir(ckpt)
    if data_dir is not None:
        where, path = "--data", Path(data_dir)
    elif read is not None:
        where, path = "the checkpoint's data record", read
    elif (run_dir / "run.json").is_file():
        try:
            recorded = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("data_dir")
        except (json.JSONDecodeError, OSError, AttributeError):
            recorded = None
        if not recorded:
            raise OkkhorError(f"{run_dir / 'run.json'}: no data_dir recorded; pass --data DATA_DIR")
        where, path = str(run_dir / "run.json"), Path(recorded)
    else:
        raise OkkhorError(f"{run_dir}: the data directory is unknown (not in the checkpoint, no run.json); "
                          f"pass --data DATA_DIR")
    if not path.is_dir():
        raise OkkhorError(f"{path}: data directory not found (from {where}); pass --data DATA_DIR")
    return path


def _checkpoint(run_dir: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------------------------- curves

def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv of a run (epoch, split, source, loss, score, recall_<target>..., lr, seconds; `source` may be
    missing in a run written before it existed)."""
    from okkhor.io.labels import read_csv_checked

    return read_csv_checked(path, ["epoch", "split", "loss", "score"], "metrics CSV")


def curve_groups(metrics: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(split, label, rows by epoch) of each curve: one per split, and one valid curve per source when the run read
    several (labelled `valid <source>`)."""
    sources = metrics["source"] if "source" in metrics.columns else pd.Series("", index=metrics.index)
    sources = sources.fillna("").astype(str)
    several = sources[metrics["split"] == "valid"].nunique() > 1
    groups = []
    for (split, source), group in metrics.groupby([metrics["split"].astype(str), sources], sort=False):
        label = f"{split} {source}" if several and split == "valid" else split
        groups.append((split, label, group.sort_values("epoch")))
    return groups


def plot_curves(metrics: pd.DataFrame, path: Path) -> Path:
    """Loss and score per split, valid recall per target, and the learning rate, against the epoch."""
    from matplotlib.ticker import MaxNLocator

    from okkhor.inference.evaluate import figure, save_figure

    fig = figure(12.0, 7.0)
    axes = fig.subplots(2, 2)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    styles = {"train_clean": dict(color="#2e86c1", marker="o"), "valid": dict(color="#c0392b", marker="s")}
    groups = curve_groups(metrics)
    valids = [(label, group) for split, label, group in groups if split == "valid"]
    for ax, column in ((axes[0, 0], "loss"), (axes[0, 1], "score")):
        for split, label, group in groups:
            style = styles.get(split, {}) if label == split else dict(marker="s")   # several valid: a colour each
            ax.plot(group["epoch"], pd.to_numeric(group[column], errors="coerce"), label=label, markersize=3,
                    **style)
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    recall_cols = [c for c in metrics.columns if c.startswith("recall_")]
    for k, (label, valid) in enumerate(valids):
        for column in recall_cols:
            name = column[len("recall_"):] + (f" ({label[len('valid '):]})" if len(valids) > 1 else "")
            axes[1, 0].plot(valid["epoch"], pd.to_numeric(valid[column], errors="coerce"), marker=".",
                            linestyle=("-", "--", ":", "-.")[k % 4], label=name)
    axes[1, 0].set_title("valid recall per target" + (" and source" if len(valids) > 1 else ""))
    axes[1, 0].set_xlabel("epoch")
    axes[1, 0].grid(alpha=0.3)
    if recall_cols:
        axes[1, 0].legend(fontsize=8)
    if "lr" in metrics.columns:
        lr = metrics.groupby("epoch")["lr"].first()
        axes[1, 1].plot(lr.index, pd.to_numeric(lr, errors="coerce"), color="#27ae60", marker=".")
    axes[1, 1].set_title("learning rate")
    axes[1, 1].set_xlabel("epoch")
    axes[1, 1].grid(alpha=0.3)
    return save_figure(fig, path)


def _best_rows(metrics: pd.DataFrame) -> str:
    """The best and last valid rows (of each source, when the run read several)."""
    cols = [c for c in ("epoch", "loss", "score", *[c for c in metrics.columns if c.startswith("recall_")])
            if c in metrics.columns]
    rows = ""
    for split, label, valid in curve_groups(metrics):
        scores = pd.to_numeric(valid["score"], errors="coerce")
        if split != "valid" or scores.notna().sum() == 0:
            continue
        best, last = valid.loc[scores.idxmax()], valid.iloc[-1]
        for which, row in ((f"best {label}", best), (f"last {label}", last)):
            cells = "".join(f"<td>{_fmt(row[c])}</td>" for c in cols)
            rows += f"<tr><th>{_esc(which)}</th>{cells}</tr>"
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in ["", *cols])
    # a row's seconds count from its epoch's start: an epoch took its last row's
    seconds = pd.to_numeric(metrics.get("seconds", pd.Series(np.nan, index=metrics.index)), errors="coerce")
    total = seconds.groupby(metrics["epoch"]).max()
    took = f"<p class='note'>time recorded: {total.sum() / 60:.1f} min</p>" if total.notna().any() else ""
    return f"<table><tr>{head}</tr>{rows}</table>{took}"


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return _esc(value)


# ----------------------------------------------------------------------------------------------- glyphs

def _renderer() -> Callable[[str], np.ndarray] | None:
    """Render text -> uint8 dark-on-white image, from the synth renderer; None if unavailable."""
    try:
        from okkhor.sources.synth.fonts import render_grapheme

        render_grapheme("\u0995", height=TILE, width=TILE)   # fails here when no usable font is installed
    except Exception:  # a missing module, font or shaping library only costs the drawn graphemes
        return None
    return lambda text: render_grapheme(text, height=TILE, width=TILE)


def _fit_tile(img: np.ndarray) -> np.ndarray:
    """Dark-on-white uint8 image resized to TILE x TILE (keeping its aspect, padded with white)."""
    import cv2

    h, w = img.shape
    scale = TILE / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.full((TILE, TILE), 255, dtype=np.uint8)
    y, x = (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _write_png(path: Path, img: np.ndarray) -> Path:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise OkkhorError(f"{path}: cannot write PNG")
    return path


class _Glyphs:
    """Small PNGs of class components and graphemes drawn by the synth renderer, written once each."""

    def __init__(self, out: Path, rel: str):
        self.out, self.rel = out, rel
        self.render = _renderer()
        self.made: dict[str, str | None] = {}

    def draw(self, text: str | None) -> np.ndarray | None:
        """`text` drawn dark on white, TILE x TILE; None without a renderer or Bengali letters to draw."""
        if self.render is None or not any("\u0980" <= ch <= "\u09ff" for ch in text or ""):
            return None
        try:
            return _fit_tile(self.render(text))
        except Exception:  # a string the font cannot shape: the caller shows the label alone
            return None

    def text(self, text: str, key: str) -> str | None:
        """Relative path of the PNG of `text` (None when nothing can be drawn)."""
        if key not in self.made:
            img = self.draw(text)
            self.made[key] = None if img is None else f"{self.rel}/glyph_{key}.png"
            if img is not None:
                _write_png(self.out / f"glyph_{key}.png", img)
        return self.made[key]


    def img(self, text: str | None, key: str) -> str:
        path = self.text(text, key) if text else None
        return f"<img class='glyph' src='{_esc(path)}' alt='{_esc(text)}' title='{_esc(text)}'>" if path else ""


# ----------------------------------------------------------------------------------------------- sections

def _class_cell(ev, name: str, k: int, glyphs: _Glyphs) -> str:
    """A class label with its component drawn (the string itself only where it cannot be drawn)."""
    comps = ev.targets.components.get(name, ())
    text = comps[k] if k < len(comps) else ""
    picture = glyphs.img(text, f"{name}_{k}")
    return f"{k} {picture}" if picture else f"{k} {_esc(text) if text != str(k) else ''}"


def _recall_section(ev, rel: str, glyphs: _Glyphs) -> str:
    parts = []
    m = ev.metrics
    for name in ev.targets.names:
        recall = m["per_class_recall"][name]
        ranked = sorted((r, k) for k, r in enumerate(recall) if r is not None)[:WORST_ROOTS]
        rows = "".join(f"<tr><td>{_class_cell(ev, name, k, glyphs)}</td><td>{r:.3f}</td>"
                       f"<td>{m['support'][name][k]}</td></tr>" for r, k in ranked)
        parts.append(f"<div><h3>{_esc(name)}: macro recall {m['recall'][name]:.4f}</h3>"
                     f"<img src='{rel}/recall_{_esc(name)}.png' alt='recall per class of {_esc(name)}'>"
                     f"<details><summary>worst {len(ranked)} classes of {_esc(name)}</summary><table>"
                     f"<tr><th>class</th><th>recall</th><th>images</th></tr>{rows}</table></details></div>")
    return f"<div class='pairs'>{''.join(parts)}</div>"


def _pairs_section(ev, rel: str, glyphs: _Glyphs) -> str:
    blocks = []
    for name in ev.targets.names:
        pairs = ev.metrics["confused_pairs"][name][:12]
        rows = "".join(f"<tr><td>{_class_cell(ev, name, p['true'], glyphs)}</td>"
                       f"<td>{_class_cell(ev, name, p['pred'], glyphs)}</td><td>{p['count']}</td>"
                       f"<td>{100 * p['share']:.0f}%</td></tr>" for p in pairs)
        table = (f"<table><tr><th>true</th><th>predicted</th><th>images</th><th>of class</th></tr>{rows}</table>"
                 if pairs else "<p class='note'>no mistakes</p>")
        blocks.append(f"<div><h3>{_esc(name)}</h3><img src='{rel}/confusion_{_esc(name)}.png' "
                      f"alt='confused pairs of {_esc(name)}'>{table}</div>")
    return f"<div class='pairs'>{''.join(blocks)}</div>"


def _mistakes(ev, limit: int) -> np.ndarray:
    """Indices of misclassified samples, most confident mistakes first."""
    wrong = ev.y_true != ev.y_pred
    any_wrong = np.flatnonzero(wrong.any(axis=1))
    confidence = np.zeros(len(any_wrong))
    for t, name in enumerate(ev.targets.names):
        p = ev.probs[name][any_wrong, ev.y_pred[any_wrong, t]]
        confidence += np.where(wrong[any_wrong, t], p, 0.0)
    order = np.lexsort((any_wrong, -confidence))
    return any_wrong[order][:limit]


def _gallery_section(ev, out: Path, rel: str, glyphs: _Glyphs, limit: int) -> str:
    picks = _mistakes(ev, limit)
    n_wrong = int((ev.y_true != ev.y_pred).any(axis=1).sum())
    if len(picks) == 0:
        return "<p class='note'>no misclassified validation images</p>"
    bengali = is_bengali(ev.targets.names, ev.targets.num_classes)  # labels in range: grapheme strings apply
    tiles = []
    for rank, i in enumerate(picks):
        image = ev.image(int(i))
        true, pred = tuple(int(v) for v in ev.y_true[i]), tuple(int(v) for v in ev.y_pred[i])
        parts = [_fit_tile(255 - image)] if image is not None else []
        strings = [grapheme_string(*true), grapheme_string(*pred)] if bengali else [None, None]
        parts += [img for img in map(glyphs.draw, strings) if img is not None]
        if parts:
            gap = np.full((TILE, 6), 200, dtype=np.uint8)
            strip = np.concatenate([p for part in parts for p in (part, gap)][:-1], axis=1)
            _write_png(out / f"mistake_{rank:03d}.png", strip)
            title = f" title='{_esc(strings[0])} \u2192 {_esc(strings[1])}'" if strings[0] and strings[1] else ""
            picture = f"<img src='{rel}/mistake_{rank:03d}.png' alt='{_esc(ev.image_ids[i])}'{title}>"
        else:
            picture = ""
        labels = "".join(
            f"<tr><td>{_esc(name)}</td><td>{true[t]}</td>"
            f"<td{' class=bad' if true[t] != pred[t] else ''}>{pred[t]}</td></tr>"
            for t, name in enumerate(ev.targets.names))
        legend = ("image | true grapheme | predicted grapheme" if len(parts) == 3 else
                  "image" if image is not None else "")
        tiles.append(f"<div class='tile'>{picture}<div><b>{_esc(ev.image_ids[i])}</b>"
                     f"<span class='note'> {legend}</span></div><table><tr><th>target</th><th>true</th>"
                     f"<th>pred</th></tr>{labels}</table></div>")
    note = "" if glyphs.render is not None else \
        "<p class='note'>grapheme pictures need the synth renderer and a Bengali font; not available here</p>"
    return (f"<p>{n_wrong} of {len(ev.image_ids)} validation images have at least one wrong target; "
            f"showing {len(picks)}, most confident mistakes first.</p>{note}<div class='grid'>{''.join(tiles)}</div>")


def _cells_section(m: dict) -> str:
    """A table of the breakdown by the labels' group columns (seen x font_seen cells), when the labels had them."""
    cells = m.get("by_cell")
    if not cells:
        return ""
    names = list(m["recall"])
    head = "".join(f"<th>{_esc(n)} accuracy</th>" for n in names)
    rows = []
    for cell, v in cells.items():
        if v is None:
            rows.append(f"<tr><td>{_esc(cell)}</td><td>0</td><td colspan='{len(names) + 2}' class='note'>no images"
                        f"</td></tr>")
        else:
            accs = "".join(f"<td>{v['accuracy'][n]:.4f}</td>" for n in names)
            rows.append(f"<tr><td>{_esc(cell)}</td><td>{v['images']}</td><td>{v['score']:.4f}</td>{accs}"
                        f"<td>{v['exact']:.4f}</td></tr>")
    return (f"<h2 id='cells'>By group</h2><p class='note'>seen: the label triple is among the train graphemes; "
            f"font_seen: drawn in a font the model trained on.</p><table><tr><th>cell</th><th>images</th>"
            f"<th>score</th>{head}<th>exact</th></tr>{''.join(rows)}</table>")


def write_report(run_dir: str | Path, data_dir: str | Path | None = None, gallery: int = GALLERY,
                 batch_size: int = 128, device: str = "auto", show_progress: bool = True,
                 labels: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.html (images in RUN_DIR/report/) and return its path.

    Curves come from RUN_DIR/metrics.csv; per-class recall, confusions and the gallery of mistakes from evaluating
    checkpoints/best.pt (else last.pt) on its validation fold of DATA_DIR (--data, else the data dir the
    checkpoint's run read, else RUN_DIR/run.json's), or on the labelled test set `labels` (its images from DATA_DIR's
    test files) when given. Labels with `seen` / `font_seen` columns add a table by group.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OkkhorError(f"{run_dir}: run directory not found")
    metrics_csv, ckpt = run_dir / "metrics.csv", _checkpoint(run_dir)
    if not metrics_csv.is_file() and ckpt is None:
        raise OkkhorError(f"{run_dir}: not a run directory (no metrics.csv, no checkpoints/best.pt or last.pt)")
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rel = REPORT_DIR
    ev = None
    if ckpt is not None:
        from okkhor.inference.evaluate import evaluate

        data = resolve_data_dir(run_dir, data_dir, checkpoint.load(ckpt) if data_dir is None else None)
        ev = evaluate(ckpt, data, labels=labels, out=out, batch_size=batch_size, device=device,
                      show_progress=show_progress)
    sections = [f"<h1>okkhor run report: {_esc(run_dir.resolve().name)}</h1>"
                f"<p class='note'>{_esc(run_dir.resolve())}</p>"]
    sections.append("<h2 id='curves'>Training curves</h2>")
    if metrics_csv.is_file():
        metrics = read_metrics(metrics_csv)
        plot_curves(metrics, out / "curves.png")
        sections.append(f"{_best_rows(metrics)}<img src='{rel}/curves.png' alt='training curves'>")
    else:
        sections.append("<p class='note'>no metrics.csv in this run</p>")
    if ev is not None:
        glyphs = _Glyphs(out, rel)
        m = ev.metrics
        recalls = ", ".join(f"{_esc(n)} {r:.4f}" for n, r in m["recall"].items())
        accs = ", ".join(f"{_esc(n)} {a:.4f}" for n, a in m["accuracy"].items())
        sections.append(f"<h2 id='evaluation'>Evaluation of {_esc(ckpt.relative_to(run_dir))} on {_esc(ev.source)}"
                        f"</h2><p>score <b>{m['score']:.4f}</b> on {m['images']} images (macro recall: {recalls}; "
                        f"accuracy: {accs}; all targets right: {m['exact']:.4f}). "
                        f"Files: <a href='{rel}/metrics.json'>metrics.json</a>, "
                        f"<a href='{rel}/submission.csv'>submission.csv</a>, "
                        f"<a href='{rel}/truth.csv'>truth.csv</a>.</p>")
        sections.append(_cells_section(m))
        sections.append(f"<h2 id='recall'>Recall per class (worst first)</h2>{_recall_section(ev, rel, glyphs)}")
        sections.append(f"<h2 id='confusions'>Most confused pairs</h2>{_pairs_section(ev, rel, glyphs)}")
        sections.append(f"<h2 id='mistakes'>Misclassified validation images</h2>"
                        f"{_gallery_section(ev, out, rel, glyphs, gallery)}")
    else:
        sections.append("<p class='note'>no checkpoint in this run: no evaluation</p>")
    if (run_dir / "config.yaml").is_file():
        sections.append(f"<h2 id='config'>Configuration</h2><details><summary>config.yaml</summary><pre>"
                        f"{_esc((run_dir / 'config.yaml').read_text(encoding='utf-8'))}</pre></details>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>okkhor report: "
            f"{_esc(run_dir.resolve().name)}</title><style>{_CSS}</style></head><body>{''.join(sections)}"
            f"</body></html>\n")
    path = run_dir / "report.html"
    write_text_atomic(path, page)
    return path
