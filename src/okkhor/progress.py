"""One progress bar for long work: count, rate and ETA (tqdm), quiet when not wanted."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **kw) -> tqdm:
    """A tqdm bar on stderr showing count, rate and ETA; use as a context manager."""
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5, **kw)
