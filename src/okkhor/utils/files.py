"""Safe outputs: check before the work that an output can be written; write atomically, fail in one line."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from okkhor.errors import OkkhorError, WriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    """'No space left on device' (the errno's text), else the exception's own message."""
    return os.strerror(exc.errno) if exc.errno else str(exc) or exc.__class__.__name__


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (a relative path ends at '.')."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, what: str = "", folder: bool = False, hint: str = "") -> Path:
    """Fail now, in one line, when `path` could not be written later; return it as a Path.

    `path` is a file to write (`folder=False`) or a folder to write files into (`folder=True`); missing parent
    folders are fine when they can be made (none is made here). Refused: a file output that is an existing
    folder, a folder output that is a file, a path under a regular file, and a place where no file can be
    created (read-only file system, no permission: found by creating and removing a temporary file, which is
    what the later write needs, so it also holds for root).
    `what` names the output in the message (e.g. "--out"); `hint` is added to it (e.g. "pass --out DIR").
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    tail = f"; {hint}" if hint else ""
    if not folder and path.is_dir():
        raise OkkhorError(f"{label}: is a folder; give a file name{tail}")
    if folder and path.exists() and not path.is_dir():
        raise OkkhorError(f"{label}: exists and is not a folder{tail}")
    base = _nearest_existing(path if folder else path.parent)
    if not base.is_dir():
        raise OkkhorError(f"{label}: cannot be written: {base} is a file, not a folder{tail}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".okkhor-write-check.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OkkhorError(f"{label}: cannot be written: {_reason(exc)} ({base}){tail}") from None
    return path


def write_error(path: Path, exc: OSError, tmp: Path | None = None) -> WriteError:
    """One line for a failed write of `path`: the reason, the other file involved, and what is left (for writers
    that rename a temporary file themselves, e.g. ignite's atomic DiskSaver: `raise write_error(path, exc)`)."""
    other = exc.filename if exc.filename not in (None, str(path), str(tmp)) else None
    where = f" ({other})" if other else ""
    kept = "the previous file is unchanged" if path.is_file() else "nothing was written"
    return WriteError(f"{path}: could not be written: {_reason(exc)}{where}; {kept}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` when the block succeeds, delete it otherwise.

    The temporary name keeps the final suffix (e.g. `.npy`, `.parquet`) so libraries that look at it still work.
    An OSError while writing (a full disk, a read-only file system, ...) leaves any previous `path` as it was,
    removes the temporary file and becomes one OkkhorError naming `path`.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp_path, path)
    except OSError as exc:
        raise write_error(path, exc, tmp_path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_atomic(path: str | os.PathLike, frame: Any) -> None:
    """Write a pandas DataFrame as CSV (no index, UTF-8) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
