"""The fault suite: kill a tiny `okkhor train` subprocess at points this harness picks, resume it, and check that
it ends with the metrics of an uninterrupted run.

    python tools/faults.py [--kills 10] [--sigterms 2] [--seed 0] [--work DIR]

A reference run (a subprocess like the trials: the thread count changes the floats) trains 2 epochs of a tiny
model on a tiny data set (data.workers=0, train.checkpoint_every=2, mixing, dropout, EMA and accumulation on, so
every piece of resumable state is exercised). Each trial starts the same run in a fresh run dir and sends SIGKILL
at a point the harness draws, never one the code announces: after a random delay (most drawn from the reference
run's training stretch, so they land in steps, evaluations and checkpoint or metrics writes, some from its
start-up) or right after the Nth line of output (N random). It checks the run dir at once (a last.pt that loads
with weights_only=True and a metrics.csv with at most one epoch beyond it, or no checkpoint yet), then
runs `--resume` (itself killed again in some trials) until it finishes, and compares metrics.csv with the
reference's (every column but `seconds`, exactly). A SIGTERM trial checks the preemption path instead: exit
128+15, one line saying how to resume. The last line is

    faults: N injected, N survived, 0 runs lost
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ["model.name=test_efficientnet", "data.image_size=32", "data.folds=4", "train.batch_size=16",
        "data.workers=0", "eval.train_clean_size=32", "eval.batch_size=64", "train.epochs=2", "train.accum=2",
        "train.checkpoint_every=2", "mix.kind=cutmix", "mix.prob=0.5", "model.dropout=0.2", "train.ema=0.5",
        "train.device=cpu"]
EXACT = ["epoch", "split", "loss", "score", "lr"]  # and every recall_<target> column


def _env() -> dict:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def make_data(work: Path) -> Path:
    """The tiny data set with its cache and folds (so that no trial is killed while it makes them); the same as
    tests/test_faults.py's."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_tiny_kaggle
    from okkhor.data.folds import split
    from okkhor.data.prepare import prepare
    from okkhor.io.labels import load_targets

    data = make_tiny_kaggle(work / "data", n_train=96, n_test=0)
    prepare(data.root, size=32, show_progress=False)
    split(data.root, load_targets(data.root), folds=4, seed=42)
    return data.root


def train_cmd(data: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "okkhor", "train", "--data", str(data), "--out", str(out), "--no-progress",
            *(["--resume"] if resume else []), *sum((["--set", s] for s in SETS), [])]


def values(out: Path):
    import pandas as pd

    df = pd.read_csv(out / "metrics.csv")
    return df[EXACT + [c for c in df.columns if c.startswith("recall_")]]


@dataclass
class Kill:
    """Where to kill: `after_s` seconds after the start, or right after the `after_lines`th output line."""

    signum: int = signal.SIGKILL
    after_s: float | None = None
    after_lines: int | None = None
    from_first_line: bool = False  # after_s counts from the first output line (training begins), not the start

    def describe(self) -> str:
        how = (f"{self.after_s:.2f}s{' into training' if self.from_first_line else ''}" if self.after_s is not None
               else f"line {self.after_lines}")
        return f"{signal.Signals(self.signum).name} after {how}"


def run(cmd: list[str], kill: Kill | None = None, timeout: float = 300, times: list | None = None
        ) -> tuple[int, str, bool]:
    """Run `cmd`; with `kill`, send its signal at its point. (exit code, output, whether the signal was sent);
    `times` gets the seconds from the start to each output line."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    sent = threading.Event()

    def send() -> None:
        if proc.poll() is None:
            proc.send_signal(kill.signum)
            sent.set()

    timer = None

    def start_timer() -> None:
        nonlocal timer
        timer = threading.Timer(kill.after_s, send)
        timer.start()

    if kill is not None and kill.after_s is not None and not kill.from_first_line:
        start_timer()
    try:
        for line in proc.stdout:
            lines.append(line)
            if kill is not None and kill.after_s is not None and kill.from_first_line and timer is None:
                start_timer()
            if times is not None:
                times.append(time.time() - start)
            if kill is not None and kill.after_lines is not None and len(lines) == kill.after_lines:
                send()
        code = proc.wait(timeout=timeout)
    finally:  # the harness itself stopped (Ctrl-C, a timeout): leave no training behind
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, "".join(lines), sent.is_set()


def check_consistent(out: Path) -> str:
    """What the run dir holds right after a kill; raises AssertionError when it is inconsistent."""
    import pandas as pd

    from okkhor.io import checkpoint

    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        return "no checkpoint yet"
    ckpt = checkpoint.load_for_resume(last)   # weights_only=True: a file a kill left half written would not load
    done, within = checkpoint.finished_epochs(ckpt), checkpoint.epoch_iteration(ckpt)
    if (out / "metrics.csv").is_file():
        epochs = pd.read_csv(out / "metrics.csv")["epoch"]
        # metrics are written before the epoch's checkpoint: at most one epoch more, dropped on resume
        assert epochs.empty or epochs.max() <= done + 1, f"metrics.csv has epoch {epochs.max()}, last.pt {done}"
    return f"last.pt at epoch {done}" + (f" + {within} iterations" if within else "")


def trial(data: Path, out: Path, kill: Kill, reference, again: Kill | None = None) -> tuple[str, int]:
    """One run with injected faults: run, signal, check, resume until done, compare. Returns a description and the
    number of signals sent; raises AssertionError when the run is lost."""
    code, output, sent = run(train_cmd(data, out, resume=False), kill)
    signals = int(sent)
    if not sent:
        assert code == 0, output
        state = "finished before the signal"
    elif kill.signum == signal.SIGTERM and code == -signal.SIGTERM:
        state = f"SIGTERM before training started (no handler yet); {check_consistent(out)}"
    elif kill.signum == signal.SIGTERM:
        last = [ln for ln in output.splitlines() if ln.strip()][-1] if output.strip() else ""
        assert code == 128 + signal.SIGTERM, f"exit {code}: {output[-2000:]}"
        assert last.startswith("train: stopped by SIGTERM") and "--resume" in last, output[-2000:]
        state = check_consistent(out)
    else:
        state = check_consistent(out)
    for attempt in range(4):
        if (out / "metrics.csv").is_file() and code == 0:
            break
        code, output, sent = run(train_cmd(data, out, resume=True), again if attempt == 0 else None)
        if sent:
            signals += 1
            state += f"; resume killed, then {check_consistent(out)}"
    assert code == 0, output[-2000:]
    import pandas as pd

    pd.testing.assert_frame_equal(values(out), reference, check_exact=True)
    return state, signals


def run_suite(data: Path, work: Path, kills: int, sigterms: int, seed: int = 0,
              out=print) -> tuple[int, int, int]:
    """The trials on DATA (made by `make_data`) in WORK; (injected, survived, lost), after a reference run (the
    trials' delays are drawn from its time line: most after its first output line, when training begins)."""
    rng = random.Random(seed)
    start, times = time.time(), []
    code, output, _ = run(train_cmd(data, work / "reference", resume=False), times=times)
    if code != 0:
        out(output)
        raise RuntimeError("faults: the reference run failed")
    duration, n_lines = time.time() - start, len(output.splitlines())
    begin = times[0] if times else 0.2
    reference = values(work / "reference")
    out(f"faults: reference run {duration:.1f}s (training from {begin:.1f}s), {n_lines} output lines")
    injected = survived = lost = 0
    for i in range(kills + sigterms):
        signum = signal.SIGKILL if i < kills else signal.SIGTERM
        if i % 3 == 2:
            kill = Kill(signum, after_lines=rng.randint(1, max(1, n_lines - 1)))
        elif i % 5 == 4:  # start-up: imports, data, model
            kill = Kill(signum, after_s=rng.uniform(0.2, begin))
        else:  # training: steps, evaluations, checkpoint and metrics writes (timed from the trial's first line)
            kill = Kill(signum, after_s=rng.uniform(0.0, 0.9 * (duration - begin)), from_first_line=True)
        again = (Kill(signal.SIGKILL, after_s=rng.uniform(0.0, 0.9 * (duration - begin)), from_first_line=True)
                 if i % 4 == 3 else None)
        try:
            state, signals = trial(data, work / f"trial{i}", kill, reference, again)
            injected, survived = injected + signals, survived + signals
            verdict = "survived" if signals else "no fault injected (not counted)"
        except AssertionError as exc:
            state, verdict = (str(exc).splitlines() or ["assertion"])[0], "LOST"
            injected, lost = injected + 1, lost + 1
        out(f"faults: {kill.describe()}{' (+ a kill in the resume)' if again else ''}: {state}: {verdict}")
    out(f"faults: {injected} injected, {survived} survived, {lost} runs lost")
    return injected, survived, lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILL trials")
    parser.add_argument("--sigterms", type=int, default=2, help="SIGTERM (preemption) trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    # a SIGTERM to the harness unwinds it: the trial in flight is killed and the work folder removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="okkhor-faults-") as tmp:
        work = args.work or Path(tmp)
        _, _, lost = run_suite(make_data(work), work, args.kills, args.sigterms, args.seed,
                               out=lambda line: print(line, flush=True))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
