"""Faults and bad input: foreign or broken checkpoints, outputs that cannot be written, failed writes.

Each gets one line naming the file (`okkhor: error: ...`, exit 2, no traceback), no checkpoint runs code, an
unwritable output is refused before the work starts, and a failed write leaves the previous file as it was.
The tests run as root in CI containers, where chmod does not stop a write: unwritable places are made from
paths under a regular file, outputs that are folders, and (where `unshare -m` may mount one) a read-only tmpfs.
"""
from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import _is_progress, assert_one_line_error, cli, make_checkpoint
from okkhor.errors import OkkhorError
from okkhor.models.model import load_checkpoint, load_for_inference
from okkhor.training.checkpoints import load_training_checkpoint
from okkhor.utils.files import atomic_path, check_writable, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


class OpensAFile:
    """Unpickling this object creates `path`: what a hostile checkpoint could do on torch.load(weights_only=False)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def ckpts(tiny_kaggle_dir, tmp_path_factory):
    """A data set (with folds), a good checkpoint and a folder of bad ones, and the file the hostile one makes."""
    from okkhor.data.folds import split
    from okkhor.io.labels import load_targets

    data = tiny_kaggle_dir(copy=True, n_train=32, n_test=8)
    split(data.root, load_targets(data.root), folds=2, seed=0)
    tmp = tmp_path_factory.mktemp("ckpts")
    good = make_checkpoint(tmp / "good.pt", data.root, fold=0)
    raw = good.read_bytes()
    made = tmp / "pwned.txt"
    bad = {
        "hostile": lambda p: torch.save({"config": {}, "targets": {}, "model": OpensAFile(made)}, p),
        "truncated": lambda p: p.write_bytes(raw[:len(raw) // 2]),
        "random": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "empty": lambda p: p.write_bytes(b""),
        "tensor": lambda p: torch.save(torch.zeros(3), p),
    }
    state = torch.load(good, weights_only=True)
    other = copy.deepcopy(state)
    other["config"]["model"]["name"] = "test_efficientnet"   # weights of test_resnet under another name
    bad["other_backbone"] = lambda p: torch.save(other, p)
    paths = {}
    for name, write in bad.items():
        paths[name] = tmp / f"{name}.pt"
        write(paths[name])
    return data, good, paths, made


# the one-line message each bad checkpoint gets (a part of it), whatever verb loads it
CKPT_MESSAGES = {
    "hostile": "refused: it asks for io.open",
    "truncated": "not a readable checkpoint (truncated, corrupted or not a torch file",
    "random": "not a readable checkpoint (truncated, corrupted or not a torch file",
    "empty": "not a readable checkpoint (an empty file",
    "tensor": "not an okkhor checkpoint (it holds a Tensor, not a dict)",
    "other_backbone": "its weights do not fit the model its config describes (model.name test_efficientnet",
}


def _verb_args(verb: str, ckpt: Path, data, tmp: Path) -> tuple[list, Path]:
    """The command line of `verb` on checkpoint `ckpt`, and the checkpoint file it reads."""
    if verb == "predict":
        return ["predict", ckpt, "--data", data.root, "--out", tmp / "s.csv"], ckpt
    if verb == "evaluate":
        return ["evaluate", ckpt, "--data", data.root, "--out", tmp / "ev"], ckpt
    if verb == "export":
        return ["export", ckpt, "--onnx", tmp / "m.onnx", "--no-check"], ckpt
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(ckpt, run / "checkpoints" / "best.pt")
    return ["report", run, "--data", data.root], run / "checkpoints" / "best.pt"


@pytest.mark.parametrize("kind", list(CKPT_MESSAGES))
@pytest.mark.parametrize("verb", ["predict", "evaluate", "export", "report"])
def test_bad_checkpoint_is_one_line_from_every_verb(ckpts, tmp_path, verb, kind):
    data, _, paths, made = ckpts
    if verb == "export":
        pytest.importorskip("onnx")
    args, read = _verb_args(verb, paths[kind], data, tmp_path)
    code, out = cli(*args)
    assert_one_line_error(code, out, f"okkhor: error: {read}: {CKPT_MESSAGES[kind]}")
    assert not made.exists(), "loading the checkpoint ran code from it"
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "m.onnx").exists()


def test_hostile_checkpoint_runs_no_code_in_any_loader(ckpts):
    """The library loaders, the trainer's resume loader included, refuse it and the file is never created."""
    _, _, paths, made = ckpts
    # the same pickle does create the file when loaded the unsafe way: the test would notice code running
    torch.load(paths["hostile"], weights_only=False)["model"].close()
    assert made.exists()
    made.unlink()
    for load in (load_checkpoint, load_for_inference, load_training_checkpoint):
        with pytest.raises(OkkhorError, match="refused: it asks for io.open"):
            load(paths["hostile"])
        assert not made.exists()


def test_subprocess_cli_prints_one_line_and_runs_no_code(ckpts, tmp_path):
    """Through `python -m okkhor` as a user runs it: stderr is one line, stdout empty, exit 2."""
    data, _, paths, made = ckpts
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "okkhor", "predict", str(paths["hostile"]), "--data",
                           str(data.root), "--out", str(tmp_path / "s.csv")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"okkhor: error: {paths['hostile']}: refused: it asks for io.open; okkhor loads checkpoints with "
        f"torch.load(weights_only=True), which runs no code from the file, so this is not an okkhor checkpoint "
        f"or it was altered"]
    assert not made.exists()


def test_checkpoint_that_is_a_folder_or_missing(tmp_path):
    with pytest.raises(OkkhorError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
    with pytest.raises(OkkhorError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoint_with_numpy_and_python_rng_state_loads(ckpts, tmp_path):
    """Checkpoints written before the RNG state became plain data hold numpy arrays and python's random state
    (tuples of ints): they still load, without running code, and equal what was saved."""
    import random

    _, good, _, _ = ckpts
    state = torch.load(good, weights_only=True)
    rng = np.random.RandomState(3)
    state["rng"] = {"python": random.Random(5).getstate(), "numpy": rng.get_state(), "torch": torch.get_rng_state()}
    state["best_score"] = np.float64(0.5)
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    np.testing.assert_array_equal(loaded["rng"]["numpy"][1], rng.get_state()[1])
    assert loaded["rng"]["python"] == random.Random(5).getstate()
    assert loaded["best_score"] == 0.5
    restored = np.random.RandomState()
    restored.set_state(loaded["rng"]["numpy"])
    assert restored.randint(0, 1 << 30) == rng.randint(0, 1 << 30)


def test_checkpoint_of_other_targets(ckpts, tiny_kaggle_dir, tmp_path):
    """A checkpoint of one target with 5 classes, used on data with the three targets (4/3/2 classes)."""
    data, _, _, _ = ckpts
    one = tiny_kaggle_dir(n_train=16, n_test=4, classes=(5,))
    ckpt = make_checkpoint(tmp_path / "one.pt", one.root)
    want = f"one.pt: predicts grapheme_root with 5 classes but {data.root / 'class_map.csv'} has 4"
    assert_one_line_error(*cli("predict", ckpt, "--data", data.root, "--out", tmp_path / "s.csv"), want)
    assert_one_line_error(*cli("evaluate", ckpt, "--data", data.root, "--out", tmp_path / "ev"), want)
    assert not (tmp_path / "s.csv").exists()
    # and the other way round: a three-target checkpoint on one-target data lacks nothing but class counts
    three = ckpts[1]
    assert_one_line_error(*cli("predict", three, "--data", one.root, "--out", tmp_path / "s.csv"),
                          "good.pt: predicts grapheme_root with 4 classes", "has 5")


# ---------------------------------------------------------------------------------- outputs that cannot be written

@pytest.fixture
def no_work(monkeypatch):
    """Record whether a verb started its work (loading a model, rendering, preparing, splitting, reporting):
    the output check must come first."""
    started = []

    def mark(*args, **kwargs):
        started.append(args)
        raise AssertionError("the work started before the output check")

    import okkhor.data.folds
    import okkhor.data.prepare
    import okkhor.inference.evaluate
    import okkhor.inference.predict
    import okkhor.models.model
    import okkhor.reporting.preview
    import okkhor.reporting.report
    import okkhor.sources.synth.writer
    for module, name in ((okkhor.inference.predict, "load_members"), (okkhor.inference.evaluate, "load_members"),
                         (okkhor.models.model, "load_for_inference"), (okkhor.sources.synth.writer, "synthesize"),
                         (okkhor.data.prepare, "prepare"), (okkhor.reporting.preview, "prepare"),
                         (okkhor.data.folds, "split"), (okkhor.reporting.report, "write_report")):
        monkeypatch.setattr(module, name, mark)
    return started


def test_predict_output_under_a_file_fails_before_predicting(ckpts, tmp_path, no_work):
    data, good, _, _ = ckpts
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(*cli("predict", good, "--data", data.root, "--out", tmp_path / "afile" / "s.csv"),
                          f"--out {tmp_path / 'afile' / 's.csv'}: cannot be written: {tmp_path / 'afile'} is a "
                          f"file, not a folder")
    assert_one_line_error(*cli("predict", good, "--data", data.root, "--out", tmp_path / "afile" / "deeper" /
                               "s.csv"), f"{tmp_path / 'afile'} is a file, not a folder")
    assert_one_line_error(*cli("predict", good, "--data", data.root, "--out", tmp_path / "s.csv", "--probs",
                               tmp_path / "afile" / "p.npz"), "--probs", "is a file, not a folder")
    assert no_work == []
    assert (tmp_path / "afile").read_text() == "x"


def test_output_that_is_a_folder(ckpts, tmp_path, no_work):
    data, good, _, _ = ckpts
    folder = tmp_path / "out"
    folder.mkdir()
    assert_one_line_error(*cli("predict", good, "--data", data.root, "--out", folder),
                          f"--out {folder}: is a folder; give a file name")
    assert_one_line_error(*cli("export", good, "--onnx", folder), f"--onnx {folder}: is a folder")
    assert_one_line_error(*cli("split", data.root, "--out", folder), f"--out {folder}: is a folder")
    assert_one_line_error(*cli("preview", data.root, "--out", folder), f"--out {folder}: is a folder")
    assert no_work == []
    assert list(folder.iterdir()) == []


def test_folder_outputs_that_are_files(ckpts, tmp_path, no_work):
    data, good, _, _ = ckpts
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(*cli("evaluate", good, "--data", data.root, "--out", afile),
                          f"output folder {afile}: exists and is not a folder")
    assert_one_line_error(*cli("prepare", data.root, "--out", afile), f"--out {afile}: exists and is not a folder")
    assert_one_line_error(*cli("synth", afile, "--train", 4, "--test", 2), f"OUT_DIR {afile}: exists and is not")
    assert_one_line_error(*cli("synth", afile / "data", "--train", 4, "--test", 2),
                          f"OUT_DIR {afile / 'data'}: cannot be written: {afile} is a file, not a folder")
    assert no_work == []
    assert afile.read_text() == "x"


def test_default_outputs_in_the_data_and_run_folders(ckpts, tmp_path, no_work):
    """prepare's cache, split's folds.csv and report's report.html are checked where they would go."""
    data, good, _, _ = ckpts
    copy_dir = tmp_path / "data"
    shutil.copytree(data.root, copy_dir)
    shutil.rmtree(copy_dir / "cache", ignore_errors=True)   # made by an evaluate test
    (copy_dir / "cache").write_text("not a folder")
    assert_one_line_error(*cli("prepare", copy_dir, "--size", 32), f"cache folder {copy_dir / 'cache' / '32'}",
                          "is a file, not a folder; pass --out DIR")
    (copy_dir / "folds.csv").unlink()
    (copy_dir / "folds.csv").mkdir()
    assert_one_line_error(*cli("split", copy_dir), f"folds file {copy_dir / 'folds.csv'}: is a folder",
                          "pass --out FILE")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(good, run / "checkpoints" / "best.pt")
    (run / "report.html").mkdir()
    assert_one_line_error(*cli("report", run, "--data", data.root), f"report {run / 'report.html'}: is a folder")
    assert no_work == []


def _can_mount_tmpfs(where: Path) -> bool:
    """Whether a read-only tmpfs can be mounted at `where` in a private mount namespace (gone when it exits)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro none {where}"],
                           capture_output=True)
    return probe.returncode == 0


def test_read_only_file_system(ckpts, tmp_path):
    """A real read-only mount (tmpfs, ro) in a private mount namespace: split and prepare refuse it at once (the
    verbs that load torch share the same check, tested with a monkeypatched EROFS in test_check_writable)."""
    data, _, _, _ = ckpts
    ro = tmp_path / "ro"
    ro.mkdir()
    if not _can_mount_tmpfs(ro):
        pytest.skip("cannot mount a read-only tmpfs here (needs `unshare -m` and mount rights)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    okkhor = f"{sys.executable} -m okkhor"
    script = (f"mount -t tmpfs -o ro none {ro} && "
              f"{okkhor} split {data.root} --out {ro}/folds.csv; echo rc=$?; "
              f"{okkhor} prepare {data.root} --out {ro}/cache/32; echo rc=$?")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.stdout.split() == ["rc=2", "rc=2"], proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"okkhor: error: --out {ro}/folds.csv: cannot be written: Read-only file system ({ro})",
        f"okkhor: error: --out {ro}/cache/32: cannot be written: Read-only file system ({ro})"]


def test_check_writable(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "out.csv"
    assert check_writable(target, "--out") == target
    assert not (tmp_path / "a").exists(), "the check makes no folders"
    assert list(tmp_path.iterdir()) == [], "the probe file is removed"
    assert check_writable(tmp_path / "new", folder=True) == tmp_path / "new"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("okkhor.utils.files.tempfile.mkstemp", read_only)
    with pytest.raises(OkkhorError, match=r"--out .*out.csv: cannot be written: Read-only file system \("):
        check_writable(target, "--out")


# -------------------------------------------------------------------------------------- writes that fail midway

def _failing_writer(tmp: Path, code: int = errno.ENOSPC) -> None:
    """Write half a file, then fail the way a full disk does."""
    tmp.write_bytes(b"partial")
    raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path, code):
    path = tmp_path / "metrics.csv"
    path.write_text("previous")
    with pytest.raises(OkkhorError) as info:
        with atomic_path(path) as tmp:
            _failing_writer(tmp, code)
    assert str(info.value) == f"{path}: could not be written: {os.strerror(code)}; the previous file is unchanged"
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_failed_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "new.txt"
    with pytest.raises(OkkhorError, match="new.txt: could not be written: No space left on device; nothing was"):
        with atomic_path(path) as tmp:
            _failing_writer(tmp)
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_text("previous")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("okkhor.utils.files.os.replace", full)
    with pytest.raises(OkkhorError, match="last.pt: could not be written: No space left on device; the previous"):
        write_text_atomic(path, "new")
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_temp_file_that_cannot_be_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OkkhorError, match=r"afile/out.txt: could not be written: (Not a directory|File exists)"):
        write_text_atomic(tmp_path / "afile" / "out.txt", "new")


def test_other_errors_pass_through_and_clean_up(tmp_path):
    path = tmp_path / "x.txt"
    with pytest.raises(ValueError, match="boom"):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_predict_on_a_full_disk_is_one_line_and_keeps_the_old_submission(ckpts, tmp_path, monkeypatch):
    """The submission write fails with ENOSPC after the prediction: one line, the old submission stays."""
    data, good, _, _ = ckpts
    out = tmp_path / "s.csv"
    out.write_text("row_id,target\nold,0\n")

    def full(self, path, *args, **kwargs):
        Path(path).write_text("row_id,tar")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, output = cli("predict", good, "--data", data.root, "--out", out)
    # the prediction ran, so its progress line comes first
    lines = [line for line in output.strip().splitlines() if line.strip() and not _is_progress(line)]
    assert code == 2 and lines == [f"okkhor: error: {out}: could not be written: No space left on device; the "
                                   f"previous file is unchanged"], output
    assert out.read_text() == "row_id,target\nold,0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_train_out_under_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    code, out = cli("train", "--data", tmp_path, "--out", tmp_path / "afile" / "run", "--config", "demo-cpu")
    assert_one_line_error(code, out, "afile")
