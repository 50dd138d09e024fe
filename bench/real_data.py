"""What real handwriting adds: real only, synthetic only, both in one run, synthetic pretraining then fine-tuning,
and the ways of carrying the hand to the graphemes real data lacks, each scored on the two real evaluation sets.

    python bench/real_data.py                       # every row (hours: each long row takes 20-25 minutes)
    python bench/real_data.py --rows real,finetune --k 5,20
    python bench/real_data.py --quick               # a smoke version of every row in a few minutes
    python bench/real_data.py --rows real-k20 --seed 1  # a second seed: rows named real-k20-seed1

Rows (--rows takes these names or groups):
  real-k<K>      generalize-cpu on K real images per class alone (epochs of REAL_EPOCH_SIZE draws)
  synth          generalize-cpu on its synthetic set (the preset as it is)
  both-k<K>      one run over both sources: real a REAL_SHARE of every epoch, best.pt by the real fold's score
  finetune-k<K>  the synth row's best.pt fine-tuned on the K real images per class (the finetune-real preset)
  carry-*        the ways of carrying the hand tried at k = CARRY_K (group `carry`): both-k100 and finetune-k100,
                 carry-share50 (real half of every batch), carry-both-finetune (the both run fine-tuned on real),
                 carry-stylize (when this okkhor has `okkhor stylize`: real + the synthetic set stylised by a
                 CycleGAN fitted on the two); the best by conjunct root accuracy is marked in the table

The real images are ../shared/handwriting-train (imported with `okkhor import`); a tenth of its writers (fixed
seed) are held out as the real validation fold (fold 0 of data.folds), and K images per class are drawn (fixed
seed, nested: the 5 are among the 20) from the other writers' images; K = 100 stands for all of them (about 90 per
class). Scores: `okkhor predict` + `okkhor score` on ../shared/handwriting-dev (basic letters) and
../shared/handwriting-dev-conjuncts (conjuncts no real training image shows): root accuracy, which are only ever
predicted, never trained on. Each row is appended to bench/real_data.json and the table of docs/real-data.md is
rewritten from it (--quick: to WORK/quick.json and WORK/real-data-quick.md instead).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from generalize import okkhor, score, synth_line, synthesis_code_digest

ROOT = Path(__file__).resolve().parents[1]
RESULTS, DOC = ROOT / "bench" / "real_data.json", ROOT / "docs" / "real-data.md"
CONFIG, FINETUNE = "generalize-cpu", "finetune-real"
KS, CARRY_K = (5, 20, 100), 100
REAL_EPOCH_SIZE, REAL_EPOCHS = 20000, 6     # real only: 120,000 draws, as long as a third of the synthetic run
REAL_SHARE = 0.25                           # both-k<K>: the real source's share of every epoch
VALID_WRITERS = 0.1                         # share of the real set's writers held out for validation
SEED = 0
QUICK = {"synth_train": 600, "synth_test": 20, "ks": (2, 5), "set": ["train.epochs=1", "data.folds=5"],
         "real": ["data.epoch_size=600"], "finetune": ["data.epoch_size=300", "train.epochs=1"]}
TABLE = ("| row | train on | real root acc | real conjuncts root acc | real valid score | minutes |\n"
         "|---|---|---|---|---|---|")
BEGIN, END = "<!-- rows: bench/real_data.py rewrites what is between these lines -->", "<!-- end of rows -->"


# ------------------------------------------------------------------------------------------------- the data

def writer_of(path: str) -> str:
    """BanglaLekha-Isolated's file names: <class>_<district>_<gender>_<age>_<date>_<writer>_<n>.png; a writer is
    its (date, writer) pair (245 in the set)."""
    parts = Path(path).stem.split("_")
    return "_".join(parts[4:6]) if len(parts) >= 6 else Path(path).stem


def import_real(train_dir: Path, work: Path, log: Path) -> tuple[Path, pd.DataFrame]:
    """The real set imported once (WORK/real-all), and its train.csv with each image's writer."""
    from okkhor.sources.imagefolder import list_image_folder

    out = work / "real-all"
    if not (out / "train.csv").is_file():
        okkhor("import", train_dir / "images", out, "--labels", train_dir / "labels.csv", "--overwrite",
               "--no-progress", log=log)
    frame = pd.read_csv(out / "train.csv")
    mapped = sorted(pd.read_csv(train_dir / "labels.csv", dtype=str)["folder"])
    _, files = list_image_folder(train_dir / "images", mapped)
    if len(files) != len(frame):   # import numbers the images it read in this order: a skipped one breaks it
        raise SystemExit(f"{out}: {len(frame)} images imported of {len(files)} files; cannot tell the writers")
    frame["writer"] = [writer_of(path) for path, _ in files]
    return out, frame


def subsets(frame: pd.DataFrame, ks: list[int], seed: int = SEED) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(rows of the validation writers' images, {k: rows of k training images per class}); writer-independent: no
    validation writer has a training image, and the k of every class are drawn from one permutation per class."""
    rng = np.random.default_rng(seed)
    writers = rng.permutation(sorted(frame["writer"].unique()))
    held = set(writers[:max(1, round(VALID_WRITERS * len(writers)))])
    valid = np.flatnonzero(frame["writer"].isin(held).to_numpy())
    pool = frame[~frame["writer"].isin(held)]
    order = {root: rng.permutation(group.index.to_numpy()) for root, group in pool.groupby("grapheme_root")}
    return valid, {k: np.sort(np.concatenate([rows[:k] for rows in order.values()])) for k in ks}


def write_subset(src: Path, frame: pd.DataFrame, valid: np.ndarray, train: np.ndarray, out: Path,
                 folds: int) -> Path:
    """A data dir of the `train` and `valid` rows of SRC: parquet, train.csv, class_map.csv, and folds.csv with the
    validation writers' images in fold 0 and the training images spread over folds 1..folds-1."""
    from okkhor.io.kaggle import image_parquet_files, iter_image_parquet, write_image_parquet
    from okkhor.io.layout import image_file_name

    rows = np.concatenate([valid, train])
    wanted = set(frame.loc[rows, "image_id"])
    ids, images = [], []
    for path in image_parquet_files(src, "train"):
        for batch_ids, batch in iter_image_parquet(path):
            keep = [i for i, image_id in enumerate(batch_ids) if image_id in wanted]
            ids += [batch_ids[i] for i in keep]
            images.append(batch[keep])
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_image_parquet(out / image_file_name("train", 0), ids, np.concatenate(images))
    frame.loc[np.sort(rows)].drop(columns="writer").to_csv(out / "train.csv", index=False)
    shutil.copy(src / "class_map.csv", out / "class_map.csv")
    fold = {**{frame.loc[r, "image_id"]: 0 for r in valid},
            **{frame.loc[r, "image_id"]: 1 + i % (folds - 1) for i, r in enumerate(train)}}
    pd.DataFrame({"image_id": ids, "fold": [fold[i] for i in ids]}).to_csv(out / "folds.csv", index=False)
    return out


def make_synth(work: Path, quick: bool, log: Path) -> tuple[Path, float]:
    """generalize-cpu's synthetic set (its `# synth:` line; --quick: a few hundred images), reused while the line
    and the synthesis code are the same; returns it and the minutes it took (0 when reused)."""
    from okkhor.presets import find_config

    args = synth_line(find_config(CONFIG))
    if quick:
        args[args.index("--train") + 1] = str(QUICK["synth_train"])
        args[args.index("--test") + 1] = str(QUICK["synth_test"])
    data, stamp = work / ("synth-quick" if quick else "synth"), work / f"synth{'-quick' if quick else ''}.json"
    made_by = {"args": args, "code": synthesis_code_digest()}
    if stamp.is_file() and json.loads(stamp.read_text()) == made_by and (data / "train.csv").is_file():
        return data, 0.0
    start = time.time()
    okkhor("synth", *[str(data) if a == "DATA" else a for a in args], "--overwrite", log=log)
    stamp.write_text(json.dumps(made_by))
    return data, (time.time() - start) / 60


# ------------------------------------------------------------------------------------------------- the rows

def sources(real: Path, synth: Path, share: float) -> list[str]:
    return ["--set", f"data.sources=[{{dir: '{real}', name: real, share: {share}}}, {{dir: '{synth}', name: synth}}]",
            "--set", "train.select_on=real"]


def plan_rows(ks: list[int], real: dict[int, Path], synth: Path, work: Path, quick: bool, stylize: bool) -> dict:
    """{row name: (the train arguments after `okkhor train --out RUN`, the rows it needs first, what it trains on)}."""
    common = ["--config", CONFIG, *sum((["--set", s] for s in (QUICK["set"] if quick else [])), [])]
    real_only = ["--set", f"data.epoch_size={REAL_EPOCH_SIZE}", "--set", f"train.epochs={REAL_EPOCHS}"]
    if quick:
        real_only = sum((["--set", s] for s in QUICK["real"]), [])
    tune = ["--config", FINETUNE, *sum((["--set", s] for s in (QUICK["set"] + QUICK["finetune"] if quick else [])),
                                       [])]
    best = lambda name: str(work / f"run-{name}" / "checkpoints" / "best.pt")  # noqa: E731
    rows = {"synth": (["--data", synth, *common], [], "synthetic")}
    for k in ks:
        rows[f"real-k{k}"] = (["--data", real[k], *common, *real_only], [], f"{k} real per class")
        rows[f"both-k{k}"] = ([*common, *sources(real[k], synth, REAL_SHARE)], [],
                              f"{k} real per class ({REAL_SHARE:g} of each epoch) + synthetic")
        rows[f"finetune-k{k}"] = (["--data", real[k], "--init", best("synth"), *tune], ["synth"],
                                  f"synthetic, then {k} real per class")
    k = max(ks)
    rows["carry-share50"] = ([*common, *sources(real[k], synth, 0.5)], [], f"{k} real per class (half) + synthetic")
    rows["carry-both-finetune"] = (["--data", real[k], "--init", best(f"both-k{k}"), *tune], [f"both-k{k}"],
                                   f"{k} real + synthetic, then {k} real per class")
    if stylize:
        rows["carry-stylize"] = ([*common, *sources(real[k], work / "synth-stylized", REAL_SHARE)], [],
                                 f"{k} real per class + synthetic stylised by a CycleGAN")
    return rows


def carry_rows(ks: list[int]) -> list[str]:
    k = max(ks)
    return [f"both-k{k}", f"finetune-k{k}", "carry-share50", "carry-both-finetune", "carry-stylize"]


def has_stylize(log: Path) -> bool:
    try:
        okkhor("stylize", "--help", log=log)
    except SystemExit:
        return False
    return True


def stylized_synth(real: Path, synth: Path, work: Path, quick: bool, log: Path) -> Path:
    """The synthetic set stylised towards the real hands (okkhor stylize fit, then apply)."""
    out, model = work / "synth-stylized", work / "stylizer.pt"
    if not (out / "train.csv").is_file():
        okkhor("stylize", "fit", "--real", real, "--synth", synth, "--out", model, "--size", 64,
               *(["--steps", 20] if quick else []), log=log)
        okkhor("stylize", "apply", model, "--synth", synth, "--out", out, "--overwrite", log=log)
    return out


def real_valid_score(run: Path, reads_real: bool) -> float | None:
    """The best valid score on the real source (the run's only one, or the one named `real`); None for a run that
    reads no real images."""
    if not reads_real:
        return None
    metrics = pd.read_csv(run / "metrics.csv")
    valid = metrics[metrics["split"] == "valid"]
    if "source" in valid.columns and valid["source"].nunique() > 1:
        valid = valid[valid["source"] == "real"]
    return float(valid["score"].max()) if len(valid) else None


def run_row(name: str, args: list, work: Path, shared: Path, log: Path, reads_real: bool = True) -> dict:
    """Train one row, then predict and score both real evaluation sets; its times and the machine's load."""
    run = work / f"run-{name}"
    if run.exists():
        shutil.rmtree(run)
    load_before, start = os.getloadavg(), time.time()
    okkhor("train", "--out", run, "--no-progress", *args, log=log)
    trained = time.time() - start
    ckpt = run / "checkpoints" / "best.pt"
    result = {"row": name, "args": [str(a) for a in args], "real_valid": real_valid_score(run, reads_real)}
    for key, folder in (("real", shared / "handwriting-dev"), ("conjuncts", shared / "handwriting-dev-conjuncts")):
        okkhor("predict", ckpt, "--data", folder, "--out", run / f"{key}.csv", log=log)
        scored = score(folder / "test_labels.csv", run / f"{key}.csv", log)
        result[key] = {"root_accuracy": scored["accuracy"]["grapheme_root"], "score": scored["score"],
                       "exact": scored["exact"]}
    result["seconds"] = {"train": round(trained, 1), "predict": round(time.time() - start - trained, 1)}
    result["minutes"] = round((time.time() - start) / 60, 1)
    # 1/5/15-minute load averages at the row's start and end (2 cores: above 2, other work shared them)
    result["load"] = {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]}
    return result


# ------------------------------------------------------------------------------------------------- the table

def markdown(rows: list[dict], ks: list[int], mark: bool = True) -> str:
    """The table of every recorded row; with `mark`, the best carry row (by conjunct root accuracy) in bold."""
    carry = [r for r in rows if r["row"] in carry_rows(ks) and r.get("conjuncts")] if mark else []
    best = max(carry, key=lambda r: r["conjuncts"]["root_accuracy"])["row"] if carry else None
    lines = [TABLE]
    for r in rows:
        name = f"**{r['row']}** (best carry)" if r["row"] == best else r["row"]
        valid = "n/a" if r.get("real_valid") is None else f"{r['real_valid']:.3f}"
        lines.append(f"| {name} | {r.get('trains_on', '')} | {r['real']['root_accuracy']:.3f} | "
                     f"{r['conjuncts']['root_accuracy']:.3f} | {valid} | {r['minutes']} |")
    return "\n".join(lines)


def write_doc(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# Real handwriting\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else "\n"
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")


def pick(rows: dict, wanted: str, ks: list[int]) -> list[str]:
    """The row names --rows names (names or the groups real, synth, both, finetune, carry), in the plan's order."""
    if not wanted:
        return list(rows)
    chosen = set()
    for item in (w.strip() for w in wanted.split(",") if w.strip()):
        group = carry_rows(ks) if item == "carry" else [n for n in rows if re.fullmatch(rf"{item}(-k\d+)?", n)]
        if not group and item not in rows:
            raise SystemExit(f"--rows {item}: no such row or group; rows: {', '.join(rows)}")
        chosen.update([n for n in group if n in rows] or [item])
    return [n for n in rows if n in chosen]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="", help="row names or groups (real, synth, both, finetune, carry); default all")
    ap.add_argument("--k", default=",".join(map(str, KS)), help="real images per class, e.g. 5,20,100")
    ap.add_argument("--quick", action="store_true", help="a smoke version: 600 synthetic images, k = 2 and 5, one "
                    "short epoch a row; results in WORK/quick/")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the folder of the real sets")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "real-data")
    ap.add_argument("--seed", type=int, default=None, help="train with this seed (the config's `seed`) instead of "
                    "the preset's: the noise of a second seed; the row is named NAME-seedN (the same real subsets)")
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")] if not args.quick else list(QUICK["ks"])
    work = args.work / "quick" if args.quick else args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "real_data.log"
    results, doc = (work / "quick.json", work / "real-data-quick.md") if args.quick else (RESULTS, DOC)
    real_all, frame = import_real(args.shared / "handwriting-train", work, log)
    valid, chosen = subsets(frame, ks)
    folds = 5 if args.quick else 10   # generalize-cpu's data.folds (--quick sets 5)
    real = {k: write_subset(real_all, frame, valid, rows, work / f"real-k{k}", folds) for k, rows in chosen.items()}
    synth, synth_minutes = make_synth(work, args.quick, log)
    stylize = has_stylize(log)
    plan = plan_rows(ks, real, synth, work, args.quick, stylize)
    names = pick(plan, args.rows, ks)
    done: set[str] = set()
    for name in names:
        train_args, needs, trains_on = plan[name]
        for need in needs:
            if need not in done and not (work / f"run-{need}" / "checkpoints" / "best.pt").is_file():
                raise SystemExit(f"row {name} needs row {need} first (add it to --rows)")
        if name == "carry-stylize":
            stylized_synth(real[max(ks)], synth, work, args.quick, log)
        print(f"== {name}: {trains_on}", flush=True)
        row = name if args.seed is None else f"{name}-seed{args.seed}"
        seeded = [*train_args, *(["--set", f"seed={args.seed}"] if args.seed is not None else [])]
        trained = run_row(row, seeded, work, args.shared, log, reads_real=name != "synth")
        result = {**trained, "trains_on": trains_on, "seed": args.seed,
                  "quick": args.quick, "k": next((k for k in ks if name.endswith(f"-k{k}")), None),
                  "real_images": {k: int(len(r)) for k, r in chosen.items()}, "real_valid_images": int(len(valid)),
                  "synth_minutes": round(synth_minutes, 1)}
        done.add(name)
        recorded = json.loads(results.read_text()) if results.is_file() else []
        results.write_text(json.dumps(recorded + [result], indent=1) + "\n")
        write_doc(doc, markdown(recorded + [result], ks))
        print(markdown([result], ks, mark=False).splitlines()[-1], flush=True)
    if not stylize:
        print("carry-stylize: not run (this okkhor has no `okkhor stylize`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
