"""Progress off a terminal: whole lines now and then (tqdm's format), never carriage-return redraws."""
from __future__ import annotations

import io

from okkhor.utils.progress import LineProgress, progress


def test_line_progress_writes_lines_not_redraws(monkeypatch):
    out = io.StringIO()
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr("okkhor.utils.progress.time.monotonic", lambda: next(clock))
    with LineProgress(total=10, desc="epoch 1/2", unit="batch", interval=3.0, file=out) as bar:
        for _ in range(10):
            bar.set_postfix(loss="0.5000")
            bar.update(1)
        assert bar.n == 10
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")
    assert len(lines) == 4  # at 3, 6 and 9 s of a 10 s loop, and at close
    assert lines[0].startswith("epoch 1/2:  30%|| 3/10 [00:03<00:07")
    assert lines[-1].startswith("epoch 1/2: 100%|| 10/10 [00:11<00:00") and "loss=0.5000" in lines[-1]


def test_progress_off_a_terminal_is_a_line_progress(capsys):
    with progress(total=3, desc="prepare train", unit="img") as bar:  # pytest's stderr is not a terminal
        bar.update(3)
    assert isinstance(bar, LineProgress)
    err = capsys.readouterr().err
    assert "\r" not in err and err.startswith("prepare train: 100%|| 3/3 [") and err.count("\n") == 1
    with progress(total=3, desc="quiet", disable=True) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
