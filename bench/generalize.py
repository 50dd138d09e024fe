"""One row of the generalisation ablation: synth (from a config's `# synth:` line) with a held-out font family,
train, predict, and score on held-out fonts, training fonts and the two real handwriting sets (evaluation only).

    python bench/generalize.py --config generalize-cpu --holdout bensen --name base
    python bench/generalize.py --config demo-cpu --holdout bensen --name demo --set train.epochs=3

Results are appended to bench/generalization.json (one object per run) and printed as a markdown row. The real
sets (../shared/handwriting-dev, basic letters, and ../shared/handwriting-dev-conjuncts beside the checkout) are
only predicted and scored, never trained on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# result key -> real evaluation set (root accuracy is read: macro recall is harsh on one-class targets)
REAL_SETS = {"real": ROOT.parent / "shared" / "handwriting-dev",
             "conjuncts": ROOT.parent / "shared" / "handwriting-dev-conjuncts"}
RESULTS = ROOT / "bench" / "generalization.json"


def synth_line(config: Path) -> list[str]:
    """The arguments after `okkhor synth` of the config's `# synth: okkhor synth DATA ...` header line."""
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("# synth: okkhor synth "):
            return shlex.split(line[len("# synth: okkhor synth "):])
    raise SystemExit(f"{config}: no '# synth: okkhor synth DATA ...' line")


def okkhor(*args, log: Path) -> str:
    cmd = [sys.executable, "-m", "okkhor", *map(str, args)]
    print("$", shlex.join(cmd[2:]), flush=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + shlex.join(cmd[2:]) + "\n")
        f.flush()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env={**os.environ,
                             "NO_ALBUMENTATIONS_UPDATE": "1"})
        f.write(out.stdout)
    if out.returncode:
        raise SystemExit(f"failed ({out.returncode}): {shlex.join(cmd[2:])}; see {log}")
    return out.stdout


def score(truth: Path, sub: Path, log: Path) -> dict:
    return json.loads(okkhor("score", "--truth", truth, "--submission", sub, "--json", log=log).splitlines()[-1])


def synthesis_code_digest() -> str:
    """sha1 of the modules that draw the synthetic images (every module of okkhor.sources.synth and bengali.py)."""
    digest = hashlib.sha1()
    src = ROOT / "src" / "okkhor"
    for path in sorted(src.joinpath("sources", "synth").glob("*.py")) + sorted(src.glob("bengali.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a preset's name (okkhor configs) or a YAML file")
    ap.add_argument("--holdout", required=True, help="font family held out of training")
    ap.add_argument("--share", type=float, default=0.5, help="share of test images in the held-out family")
    ap.add_argument("--name", required=True, help="row name")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--synth-extra", default="", help="more synth arguments, e.g. '--style font'")
    ap.add_argument("--route", action="store_true", help="also score predict --route")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "generalize")
    args = ap.parse_args()
    from okkhor.presets import find_config

    args.config = find_config(args.config)
    synth = synth_line(args.config)
    extra = shlex.split(args.synth_extra) + ["--holdout-fonts", args.holdout, "--holdout-share", str(args.share)]
    key = "-".join([args.holdout, hashlib.sha1(shlex.join(synth + extra).encode()).hexdigest()[:8]])
    data = args.work / f"data-{key}"
    run = args.work / f"run-{args.name}-{args.holdout}"
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / f"{args.name}-{args.holdout}.log"
    log.write_text("")
    times = {}
    load_before = os.getloadavg()
    start = time.time()
    stamp = data / "synth-args.json"
    # the data is reused only for the same arguments and the same synthesis code (a changed renderer re-draws it)
    made_by = {"args": synth + extra, "code": synthesis_code_digest()}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == made_by):
        okkhor("synth", *[str(data) if a == "DATA" else a for a in synth], *extra, "--overwrite", log=log)
        stamp.write_text(json.dumps(made_by))
    times["synth"] = time.time() - start
    t = time.time()
    sets = [x for o in args.overrides for x in ("--set", o)]
    okkhor("train", "--data", data, "--out", run, "--config", args.config, *sets, log=log)
    times["train"] = time.time() - t
    t = time.time()
    ckpt = run / "checkpoints" / "best.pt"
    okkhor("predict", ckpt, "--data", data, "--out", run / "test.csv", log=log)
    times["predict"] = time.time() - t
    result = {"name": args.name, "config": str(args.config), "holdout": args.holdout, "overrides": args.overrides,
              "synth": synth + extra, "minutes": round(sum(times.values()) / 60, 1),
              "seconds": {k: round(v, 1) for k, v in times.items()},
              # the machine's 1/5/15-minute load averages when the row started and ended (2 cores: above 2 means
              # other work shared them, and the minutes are not a quiet-machine figure)
              "load": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]}}
    test = score(data / "test_labels.csv", run / "test.csv", log)
    result["test"] = test["by_cell"]
    variants = [("plain", [])] + ([("route", ["--route"])] if args.route else [])
    if args.route:
        okkhor("predict", ckpt, "--data", data, "--out", run / "test-route.csv", "--route", log=log)
        result["test_route"] = score(data / "test_labels.csv", run / "test-route.csv", log)["by_cell"]
    for key, real_dir in REAL_SETS.items():
        if not real_dir.is_dir():
            continue
        for label, flags in variants:
            okkhor("predict", ckpt, "--data", real_dir, "--out", run / f"{key}-{label}.csv", *flags, log=log)
            real = score(real_dir / "test_labels.csv", run / f"{key}-{label}.csv", log)
            result[f"{key}_{label}"] = {"root_accuracy": real["accuracy"]["grapheme_root"], "score": real["score"],
                                        "exact": real["exact"]}
    cells = result["test"]
    fmt = lambda c: "n/a" if c is None else f"{c['score']:.3f}"  # noqa: E731
    row = (f"| {args.name} | {args.holdout} | {fmt(cells.get('seen/font_unseen'))} | "
           f"{fmt(cells.get('unseen/font_unseen'))} | {fmt(cells.get('seen/font_seen'))} | "
           f"{fmt(cells.get('unseen/font_seen'))} | "
           f"{result.get('real_plain', {}).get('root_accuracy', float('nan')):.3f} | "
           f"{result.get('conjuncts_plain', {}).get('root_accuracy', float('nan')):.3f} | {result['minutes']} |")
    result["row"] = row
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps(rows + [result], indent=1, ensure_ascii=False) + "\n")
    print("| config | held out | seen, new font | unseen, new font | seen, train fonts | unseen, train fonts | "
          "real root acc | real conjuncts root acc | minutes |")
    print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
