"""Progress for long work: a tqdm bar on a terminal; in logs and pipes a plain line now and then, never redraws."""
from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

from tqdm.auto import tqdm

LINE_INTERVAL_S = 60.0   # off a terminal: at most one progress line per this many seconds (and one at the end)


class LineProgress:
    """tqdm's counting and formatting (`tqdm.format_meter`), written as whole lines for logs: one line every
    `interval` seconds and one at close. Has the tqdm methods callers use: update, set_postfix, close, n."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", disable: bool = False,
                 interval: float = LINE_INTERVAL_S, file: Optional[TextIO] = None, **_: Any):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.total, self.desc, self.unit, self.disable, self.interval = total, desc, unit, disable, interval
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self._written = 0      # the count the last line showed
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _write(self, now: float) -> None:
        if self.disable:
            return
        self._written = self.n
        # tqdm's own line without the bar graphic: `desc: 40%|| 4/10 [00:02<00:03, 1.9batch/s, loss=0.51]`
        line = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, bar_format="{l_bar}{r_bar}" if self.total else None)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._written:
                self._write(time.monotonic())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
             interval: float = LINE_INTERVAL_S, **kw: Any):
    """A progress meter on stderr with count, rate and ETA; use as a context manager.

    On a terminal a tqdm bar; otherwise (a log file, a pipe, CI) a LineProgress: a line every `interval` seconds.
    """
    if not sys.stderr.isatty():
        return LineProgress(total=total, desc=desc, unit=unit, disable=disable, interval=interval)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5, **kw)
