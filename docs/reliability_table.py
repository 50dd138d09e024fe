"""Rerun every fault and bad input of docs/reliability.md and print its table rows (markdown) with the messages.

    PYTHONPATH=src:tests NO_ALBUMENTATIONS_UPDATE=1 python docs/reliability_table.py > /tmp/rows.md

Each case runs the CLI in-process (typer's CliRunner), or `python -m okkhor` in a subprocess where the case
needs one, on tiny data sets made in a temporary folder; paths in the messages are shortened to DATA/, RUN/,
TMP/. A case whose output is more than its `okkhor: error:` line is printed as NOT ONE LINE with every line,
and one that gives no such line (or, for a library call, no exception) as FAILED, so the table cannot hide a
regression. Takes about a minute on two cores.
"""
from __future__ import annotations

import copy
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from helpers import make_tiny_kaggle
from okkhor.cli import app
from okkhor.errors import OkkhorError

ROWS: list[tuple[str, str, str, str]] = []
SUBS: dict[str, str] = {}


def short(text: str) -> str:
    for long, name in sorted(SUBS.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(re.escape(long) + r"(?![\w.-])", name, text)
    return text


def output_lines(output: str) -> list[str]:
    """The lines of an output without progress: bar redraws (the text after the last stays) and the lines
    printed off a terminal (`predict: 8/8 img (100%) [...]`)."""
    lines = [ln.rsplit("]", 1)[-1] if "%|" in ln else ln for ln in re.split(r"[\r\n]+", output.strip())]
    return [ln for ln in lines if ln.strip() and not re.match(r"[\w ]+: \d+/\d+ \w+ \(\d+%\) \[", ln)]


def cli_case(area: str, fault: str, *args, env: dict | None = None) -> None:
    """Run `okkhor ARGS` in-process; record its single error line."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    lines = output_lines(result.output)
    one = result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("okkhor: error: ")
    if one:
        message = lines[0]
    elif result.exit_code == 2 and lines and lines[-1].startswith("okkhor: error: "):
        message = f"NOT ONE LINE ({len(lines)} lines): " + " ⏎ ".join(lines)
    else:
        message = f"FAILED (exit {result.exit_code}): {result.output!r} {result.exception!r}"
    ROWS.append((area, fault, "okkhor " + " ".join(str(a) for a in args), message))


def ok_case(area: str, fault: str, *args) -> None:
    """Run `okkhor ARGS` in-process where it must succeed; record its last line."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    lines = output_lines(result.output)
    message = f"works: {lines[-1]}" if result.exit_code == 0 else f"FAILED (exit {result.exit_code}): {result.output!r}"
    ROWS.append((area, fault, "okkhor " + " ".join(str(a) for a in args), message))


def proc_case(area: str, fault: str, command: str, shown: str) -> None:
    """Run a shell command (subprocess); record its stderr, which must be one error line."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env, timeout=600)
    lines = proc.stderr.strip().splitlines()
    one = proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("okkhor: error: ")
    message = lines[0] if one else f"FAILED (exit {proc.returncode}): {proc.stderr!r}"
    ROWS.append((area, fault, shown, message))


def lib_case(area: str, fault: str, call: str, fn: Callable[[], object], exc=OkkhorError) -> None:
    """Call a library function that must raise `exc`; record its message."""
    try:
        fn()
        message = "FAILED: no error"
    except exc as e:
        message = f"{type(e).__name__}: {e}"
    ROWS.append((area, fault, call, message))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="okkhor-faults-"))
    os.chdir(tmp)
    data = make_tiny_kaggle(tmp / "data", n_train=32, n_test=8).root
    SUBS.update({str(data): "DATA", str(tmp): "TMP"})
    py = f"{sys.executable} -m okkhor"
    from okkhor.data.folds import split
    from okkhor.io.labels import load_targets
    split(data, load_targets(data), folds=2, seed=0)
    from test_predict import make_checkpoint
    ckpt = make_checkpoint(tmp / "good.pt", data)

    # ------------------------------------------------------------------ data files
    cli_case("data", "data folder missing", "prepare", tmp / "nope")
    (tmp / "empty").mkdir()
    cli_case("data", "no train parquet files", "prepare", tmp / "empty")
    table = pq.read_table(data / "train_image_data_0.parquet")
    bad_sets = {
        "parquet without image_id": table.drop(["image_id"]),
        "parquet with 32,331 pixel columns": table.drop(["32331"]),
        "pixel values 300 (int64)": table.set_column(5, "4", pa.array(np.full(table.num_rows, 300, np.int64))),
        "pixel values 0.5 (float)": table.set_column(5, "4", pa.array(np.full(table.num_rows, 0.5))),
    }
    for k, (fault, bad) in enumerate(bad_sets.items()):
        d = tmp / f"badpq{k}"
        shutil.copytree(data, d)
        pq.write_table(bad, d / "train_image_data_0.parquet")
        cli_case("data", fault, "prepare", d, "--size", 24)
    d = tmp / "trunc"
    shutil.copytree(data, d)
    raw = (d / "train_image_data_0.parquet").read_bytes()
    (d / "train_image_data_0.parquet").write_bytes(raw[:len(raw) // 2])
    cli_case("data", "truncated parquet", "prepare", d, "--size", 24)
    d = tmp / "nocol"
    shutil.copytree(data, d)
    pd.read_csv(d / "train.csv").drop(columns=["vowel_diacritic"]).to_csv(d / "train.csv", index=False)
    cli_case("data", "train.csv without a label column", "split", d)
    d = tmp / "range"
    shutil.copytree(data, d)
    df = pd.read_csv(d / "train.csv")
    df.loc[4, "vowel_diacritic"] = 11
    df.to_csv(d / "train.csv", index=False)
    cli_case("data", "label outside the class map", "split", d)
    cli_case("data", "predict: no test parquet files", "predict", ckpt, "--data", tmp / "empty", "--out", "s.csv")
    cli_case("data", "predict: data folder missing", "predict", ckpt, "--data", tmp / "gone", "--out", "s.csv")
    d = tmp / "nofolds"
    shutil.copytree(data, d)
    (d / "folds.csv").unlink()
    cli_case("data", "evaluate: no folds.csv", "evaluate", ckpt, "--data", d, "--out", tmp / "ev")
    cli_case("data", "report: run folder missing", "report", tmp / "norun")
    cli_case("data", "report: folder that is not a run", "report", tmp / "empty")
    run = tmp / "run0"
    (run / "checkpoints").mkdir(parents=True)
    make_checkpoint(run / "checkpoints" / "best.pt", data, record_data_dir=False)
    cli_case("data", "report: data folder unknown", "report", run)

    # score
    truth = pd.read_csv(data / "test_labels.csv")
    names = ["grapheme_root", "vowel_diacritic", "consonant_diacritic"]
    good_sub = pd.DataFrame([(f"{r.image_id}_{n}", getattr(r, n)) for r in truth.itertuples() for n in names],
                            columns=["row_id", "target"])
    subs = {
        "a missing row_id": good_sub.iloc[1:],
        "an unknown row_id": pd.concat([good_sub, pd.DataFrame({"row_id": ["Test_999_grapheme_root"],
                                                                "target": [1]})]),
        "a duplicate row_id": pd.concat([good_sub, good_sub.iloc[:1]]),
        "a non-integer target": good_sub.assign(target=good_sub["target"].astype(str).where(good_sub.index != 3,
                                                                                            "abc")),
        "no target column": good_sub.rename(columns={"target": "label"}),
    }
    for k, (fault, sub) in enumerate(subs.items()):
        sub.to_csv(tmp / f"sub{k}.csv", index=False)
        cli_case("data", f"submission with {fault}", "score", "--truth", data / "test_labels.csv", "--submission",
                 tmp / f"sub{k}.csv")
    bad_truth = truth.assign(font_seen="maybe")
    bad_truth.to_csv(tmp / "labels_font.csv", index=False)
    good_sub.to_csv(tmp / "sub_ok.csv", index=False)
    cli_case("data", "truth with a non-boolean font_seen", "score", "--truth", tmp / "labels_font.csv",
             "--submission", tmp / "sub_ok.csv")
    cli_case("data", "truth file missing", "score", "--truth", tmp / "nope.csv", "--submission", tmp / "sub0.csv")

    # ------------------------------------------------------------------ CLI arguments
    cli_case("cli", "--tta out of range", "predict", ckpt, "--data", data, "--tta", 9)
    cli_case("cli", "--probs not .npz", "predict", ckpt, "--data", data, "--probs", "p.txt")
    cli_case("cli", "--fold with --labels", "evaluate", ckpt, "--data", data, "--fold", 0, "--labels",
             data / "test_labels.csv")
    cli_case("cli", "synth into a dataset", "synth", data, "--train", 5, "--test", 0)
    cli_case("cli", "synth fraction > 1", "synth", tmp / "s", "--train", 5, "--test", 1, "--unseen-test-fraction", 2)
    cli_case("cli", "synth unknown font", "synth", tmp / "s", "--train", 5, "--test", 0, "--fonts", "no-such-font")
    from okkhor.sources.synth.fonts import select_fonts
    families = sorted({f.family for f in select_fonts()})
    cli_case("cli", "synth unknown --holdout-fonts", "synth", tmp / "s", "--train", 5, "--test", 5,
             "--holdout-fonts", "no-such")
    cli_case("cli", "synth holds out every family", "synth", tmp / "s", "--train", 5, "--test", 5,
             "--holdout-fonts", ",".join(families))
    cli_case("cli", "synth --holdout-share without --holdout-fonts", "synth", tmp / "s", "--train", 5, "--test", 5,
             "--holdout-share", 0.5)
    cli_case("cli", "synth unknown --style", "synth", tmp / "s", "--train", 5, "--test", 5, "--style", "pencil")
    (tmp / "fonts").mkdir()
    (tmp / "fonts" / "broken.ttf").write_bytes(b"not a font at all")
    cli_case("cli", "synth --fonts-dir with only a broken font", "synth", tmp / "s", "--train", 6, "--test", 0,
             "--fonts-dir", tmp / "fonts")
    cli_case("cli", "split unknown --group", "split", data, "--group", "writer")
    cli_case("cli", "predict --route without a grapheme head", "predict", ckpt, "--data", data, "--out", "s.csv",
             "--route")
    cli_case("cli", "preview unknown --aug", "preview", data, "--out", "x.png", "--aug", "wild")
    cli_case("cli", "preview --n 0", "preview", data, "--out", "x.png", "--n", 0)
    cli_case("cli", "memory --budget lots", "memory", "--model", "resnet18", "--image-size", 32, "--device", "cpu",
             "--budget", "lots")
    cli_case("cli", "memory fp16 on CPU", "memory", "--model", "resnet18", "--image-size", 32, "--precision",
             "fp16", "--device", "cpu")
    cli_case("cli", "--device cuda without CUDA", "predict", ckpt, "--data", data, "--device", "cuda")

    # ------------------------------------------------------------------ configs
    cli_case("config", "unknown --set key", "train", "--data", data, "--out", tmp / "r", "--set", "train.lrr=1")
    cli_case("config", "--set value of the wrong type", "train", "--data", data, "--out", tmp / "r", "--set",
             "train.epochs=abc")
    for override in ("model.act=hard_swishh", "train.optimizer=adamx", "train.schedule=cosin", "train.amp=fp8",
                     "data.fold=7", "mix.alpha=-1", "train.epochs=0", "train.batch_size=auto"):
        cli_case("config", f"bad value {override}", "train", "--data", data, "--out", tmp / "r", "--set", override)
    cli_case("config", "fp16 on CPU", "train", "--data", data, "--out", tmp / "r", "--set", "train.amp=fp16",
             "--set", "train.device=cpu")
    cli_case("config", "unknown timm model", "train", "--data", data, "--out", tmp / "r", "--set",
             "model.name=resnet_nope")
    (tmp / "bad.yaml").write_text("train:\n  epochs: 2\n  lr_max: 0.1\n")
    cli_case("config", "unknown key in a YAML file", "train", "--data", data, "--out", tmp / "r", "--config",
             tmp / "bad.yaml")
    (tmp / "broken.yaml").write_text("train: {lr: [\n")
    cli_case("config", "broken YAML", "train", "--data", data, "--out", tmp / "r", "--config", tmp / "broken.yaml")
    cli_case("config", "config file missing", "train", "--data", data, "--out", tmp / "r", "--config",
             tmp / "missing.yaml")
    for name, text in (("nope.yaml", None), ("bad.yaml", "transform:\n  __class_fullname__: NoSuchTransform\n"),
                       ("garbage.json", "{not json")):
        path = tmp / "aug" / name
        path.parent.mkdir(exist_ok=True)
        if text is not None:
            path.write_text(text)
        cli_case("config", f"augmentation file {name}", "preview", data, "--out", "x.png", "--size", 32,
                 "--aug-file", path)
    # --resume with no checkpoint yet starts the run from the beginning (tests/test_faults.py), not an error
    fast = ["model.name=test_efficientnet", "data.image_size=32", "data.folds=2", "train.batch_size=16",
            "data.workers=0", "eval.train_clean_size=16", "train.epochs=1"]
    sets = sum((["--set", s] for s in fast), [])
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp / "run"), "--no-progress", *sets])
    assert res.exit_code == 0, res.output
    SUBS[str(tmp / "run")] = "RUN"
    cli_case("config", "--resume changing a fixed key", "train", "--data", data, "--out", tmp / "run", "--resume",
             "--set", "train.lr=0.5")
    cli_case("config", "train into an existing run", "train", "--data", data, "--out", tmp / "run", *sets)
    proc_case("config", "model.pretrained=true offline",
              f"HF_HUB_OFFLINE=1 HF_HOME={tmp}/hf TORCH_HOME={tmp}/th {py} train --data {data} --out {tmp}/rp "
              f"--set model.name=resnet18 --set model.pretrained=true",
              "HF_HUB_OFFLINE=1 okkhor train ... --set model.name=resnet18 --set model.pretrained=true")

    # ------------------------------------------------------------------ checkpoints
    made = tmp / "pwned.txt"

    class OpensAFile:
        def __reduce__(self):
            return (open, (str(made), "w"))

    raw = ckpt.read_bytes()
    from okkhor.models.model import load_checkpoint
    real = load_checkpoint(tmp / "run" / "checkpoints" / "last.pt")
    other = copy.deepcopy(real)
    other["config"]["model"]["name"] = "test_resnet"
    bad = {
        "hostile pickle (opens a file on load)": lambda p: torch.save({"model": OpensAFile()}, p),
        "truncated": lambda p: p.write_bytes(raw[:len(raw) // 2]),
        "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "empty file": lambda p: p.write_bytes(b""),
        "a plain pickle, not torch": lambda p: p.write_bytes(__import__("pickle").dumps({"a": 1})),
        "a torch file holding a tensor": lambda p: torch.save(torch.zeros(3), p),
        "a dict without okkhor keys": lambda p: torch.save({"state_dict": {}}, p),
        "another backbone name in its config": lambda p: torch.save(other, p),
        "an unknown config key": lambda p: torch.save({**real, "config": {**real["config"], "bogus": 1}}, p),
    }
    for k, (fault, write) in enumerate(bad.items()):
        path = tmp / f"bad{k}.pt"
        write(path)
        cli_case("checkpoint", fault, "predict", path, "--data", data, "--out", tmp / "s.csv")
    assert not made.exists(), "a checkpoint ran code"
    for verb, args in (("evaluate", ["--data", data]), ("export", ["--onnx", tmp / "m.onnx"])):
        cli_case("checkpoint", "hostile pickle", verb, tmp / "bad0.pt", *args)
    run = tmp / "run1"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(tmp / "bad1.pt", run / "checkpoints" / "best.pt")
    cli_case("checkpoint", "truncated best.pt", "report", run, "--data", data)
    for k, fault in ((0, "hostile pickle as last.pt"), (1, "truncated last.pt")):
        resumed = tmp / f"resume{k}"
        shutil.copytree(tmp / "run", resumed)
        shutil.copyfile(tmp / f"bad{k}.pt", resumed / "checkpoints" / "last.pt")
        cli_case("checkpoint", fault, "train", "--data", data, "--out", resumed, "--resume")
    from okkhor.training.checkpoints import load_training_checkpoint
    lib_case("checkpoint", "hostile pickle as last.pt (train --resume's loader)",
             "okkhor.training.checkpoints.load_training_checkpoint(bad0.pt)",
             lambda: load_training_checkpoint(tmp / "bad0.pt"))
    lib_case("checkpoint", "inference-only checkpoint for --resume",
             "okkhor.training.checkpoints.load_training_checkpoint(good.pt)", lambda: load_training_checkpoint(ckpt))
    assert not made.exists(), "a checkpoint ran code"
    import random
    old = {**load_checkpoint(ckpt), "best_score": np.float64(0.5),
           "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}}
    torch.save(old, tmp / "old.pt")
    ok_case("checkpoint", "older format: numpy RNG state and scalars, python random state", "predict",
            tmp / "old.pt", "--data", data, "--out", tmp / "s.csv")
    ok_case("checkpoint", "last.pt of a run of the current trainer", "predict",
            tmp / "run" / "checkpoints" / "last.pt", "--data", data, "--out", tmp / "s.csv")
    cli_case("checkpoint", "missing", "predict", tmp / "nope.pt", "--data", data, "--out", "s.csv")
    cli_case("checkpoint", "a folder", "predict", tmp / "empty", "--data", data, "--out", "s.csv")
    one = make_tiny_kaggle(tmp / "one", n_train=16, n_test=4, classes=(5,)).root
    one_ckpt = make_checkpoint(tmp / "one.pt", one)
    cli_case("checkpoint", "other targets (5 classes, data has 4)", "predict", one_ckpt, "--data", data, "--out",
             "s.csv")
    cli_case("checkpoint", "other targets", "evaluate", one_ckpt, "--data", data)
    a2 = make_checkpoint(tmp / "a2.pt", one)
    cli_case("checkpoint", "ensemble of other targets", "predict", ckpt, a2, "--data", data, "--out", "s.csv")

    # ------------------------------------------------------------------ outputs that cannot be written
    (tmp / "afile").write_text("x")
    (tmp / "adir").mkdir()
    cli_case("disk", "--out under a regular file", "predict", ckpt, "--data", data, "--out", tmp / "afile" / "s.csv")
    cli_case("disk", "--out is a folder", "predict", ckpt, "--data", data, "--out", tmp / "adir")
    cli_case("disk", "--probs under a regular file", "predict", ckpt, "--data", data, "--probs",
             tmp / "afile" / "p.npz")
    cli_case("disk", "--out is a file", "evaluate", ckpt, "--data", data, "--out", tmp / "afile")
    cli_case("disk", "--onnx is a folder", "export", ckpt, "--onnx", tmp / "adir")
    cli_case("disk", "--out is a folder", "split", data, "--out", tmp / "adir")
    cli_case("disk", "--out is a file", "prepare", data, "--out", tmp / "afile")
    cli_case("disk", "OUT_DIR under a regular file", "synth", tmp / "afile" / "d", "--train", 4, "--test", 2)
    cli_case("disk", "--preview under a regular file", "synth", tmp / "s2", "--train", 4, "--test", 2, "--preview",
             tmp / "afile" / "p.png")
    cli_case("disk", "--out is a folder", "preview", data, "--out", tmp / "adir")
    d = tmp / "cachefile"
    shutil.copytree(data, d)
    shutil.rmtree(d / "cache", ignore_errors=True)
    (d / "cache").write_text("x")
    cli_case("disk", "DATA/cache is a file", "prepare", d, "--size", 32)
    (d / "folds.csv").unlink()
    (d / "folds.csv").mkdir()
    cli_case("disk", "DATA/folds.csv is a folder", "split", d)
    run = tmp / "run2"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(ckpt, run / "checkpoints" / "best.pt")
    (run / "report.html").mkdir()
    cli_case("disk", "RUN/report.html is a folder", "report", run, "--data", data)
    ro = tmp / "ro"
    ro.mkdir()
    if subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro none {ro}"],
                      capture_output=True).returncode == 0:
        for verb, args in (("split", f"{data} --out {ro}/folds.csv"),
                           ("predict", f"{ckpt} --data {data} --out {ro}/sub/s.csv"),
                           ("synth", f"{ro}/d --train 4 --test 2")):
            proc_case("disk", "read-only file system (tmpfs, ro)",
                      f"unshare -m sh -c 'mount -t tmpfs -o ro none {ro} && {py} {verb} {args}'",
                      f"okkhor {verb} {short(args)}")
    from okkhor.utils.files import write_text_atomic
    (tmp / "metrics.csv").write_text("previous")
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    os.replace = full
    try:
        lib_case("disk", "ENOSPC while writing (previous file kept, temp removed)",
                 "okkhor.utils.files.write_text_atomic(TMP/metrics.csv, ...)",
                 lambda: write_text_atomic(tmp / "metrics.csv", "new"))
    finally:
        os.replace = real_replace
    assert (tmp / "metrics.csv").read_text() == "previous"
    real_to_csv = pd.DataFrame.to_csv

    def full_csv(self, path, *args, **kwargs):
        Path(path).write_text("row_id,tar")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp / "s.csv").write_text("old")
    pd.DataFrame.to_csv = full_csv
    try:
        cli_case("disk", "ENOSPC writing the submission", "predict", ckpt, "--data", data, "--out", tmp / "s.csv")
    finally:
        pd.DataFrame.to_csv = real_to_csv
    assert (tmp / "s.csv").read_text() == "old"

    print("| area | fault or bad input | command | what okkhor says |")
    print("|---|---|---|---|")
    for area, fault, command, message in ROWS:
        cells = [area, fault, f"`{short(command)}`", f"`{short(message)}`"]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    failed = sum(r[3].startswith("FAILED") for r in ROWS)
    several = sum(r[3].startswith("NOT ONE LINE") for r in ROWS)
    print(f"\n{len(ROWS)} rows, {several} not one line, {failed} failed", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
