"""Making the image files: one task per parquet file, run in this process or in a pool of worker processes."""
from __future__ import annotations

import contextlib
import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from okkhor.errors import OkkhorError
from okkhor.io.kaggle import N_PIXELS, ImageParquetWriter, pixel_columns
from okkhor.io.layout import even_chunks
from okkhor.sources.synth.face import FontSpec
from okkhor.sources.synth.hand import HandStyle
from okkhor.sources.synth.imager import Imager, Variation
from okkhor.sources.synth.keys import ImageRngs
from okkhor.sources.synth.plan import Draw
from okkhor.sources.synth.shape_style import ShapeStyle
from okkhor.utils.progress import progress as bar

ROW_GROUP_ROWS = 10_042  # parquet pays a fixed cost per row group and 32,332 columns: keep groups big
BLOCK = 256  # images rendered at a time, then moved into the row group's column-major buffer


@dataclass(frozen=True)
class FileTask:
    """One parquet file to make: a split's images [start, start + len(texts))."""

    split: str
    start: int
    texts: tuple[str, ...]
    draws: tuple[Draw, ...]
    path: str


@dataclass(frozen=True)
class Job:
    """What every task of a dataset shares: the seed, the faces and the variation ranges."""

    seed: int
    fonts: tuple[FontSpec, ...]
    variation: Variation = field(default_factory=Variation)
    hand: HandStyle = field(default_factory=HandStyle)
    shape: ShapeStyle | None = None  # the hand style's shape steps (None: off)


class Worker:
    """Makes files for one job in one process: its imager (fonts loaded once), a reused image RNG, and a shared
    counter of the images made (for the progress bar)."""

    def __init__(self, job: Job, counter):
        self.job, self.counter = job, counter
        self.imager = Imager(job.fonts, job.variation, hand=job.hand, shape=job.shape)
        self.rngs = ImageRngs()

    def images(self, split: str, start: int, texts: Sequence[str], draws: Sequence[Draw]) -> np.ndarray:
        """Images [len(texts), H, W] of a split's images start, start + 1, ..."""
        imager = self.imager
        out = np.empty((len(texts), imager.height, imager.width), np.uint8)
        for i, (text, d) in enumerate(zip(texts, draws, strict=False)):
            imager(text, self.rngs(self.job.seed, split, start + i), d.face, d.hand, out=out[i])
        return out

    def write(self, task: FileTask) -> tuple[str, int]:
        """Render one file's images row group by row group and stream them into its parquet file."""
        with ImageParquetWriter(task.path) as writer:
            done = 0
            for rows in even_chunks(len(task.texts), ROW_GROUP_ROWS):
                columns = np.empty((N_PIXELS, rows), np.uint8)
                for b in range(0, rows, BLOCK):
                    part = slice(done + b, done + min(rows, b + BLOCK))
                    texts = task.texts[part]
                    images = self.images(task.split, task.start + done + b, texts, task.draws[part])
                    pixel_columns(images, out=columns[:, b:b + len(texts)])
                    with self.counter.get_lock():
                        self.counter.value += len(texts)
                ids = [f"{task.split.capitalize()}_{task.start + done + i}" for i in range(rows)]
                writer.write_columns(ids, columns)
                done += rows
        return task.path, len(task.texts)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for OpenCV and BLAS: parallelism comes from processes, and threads would only contend."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        cv2.setNumThreads(threads)


# A pool process's Worker. The pool can only call module-level functions, so its initializer builds the
# process's one Worker here and each task reaches it through _write_in_pool; the main process never sets it.
_POOL_WORKER: Worker | None = None


def _start_pool_worker(job: Job, counter) -> None:
    global _POOL_WORKER
    cv2.setNumThreads(1)  # for the process's life, as single_threaded() for a while
    threadpool_limits(1)
    _POOL_WORKER = Worker(job, counter)


def _write_in_pool(task: FileTask) -> tuple[str, int]:
    return _POOL_WORKER.write(task)


def run_tasks(tasks: list[FileTask], job: Job, workers: int, total: int, progress: bool) -> None:
    """Make every file, in this process or in `workers` processes, with one progress bar over all images."""
    tasks = sorted(tasks, key=lambda t: -len(t.texts))  # longest first: workers finish close together
    with bar(total=total, desc="synth", unit="img", disable=not progress) as pbar:
        if workers <= 1 or len(tasks) <= 1:
            with single_threaded():
                worker = Worker(job, mp.Value("q", 0, lock=True))
                for task in tasks:
                    worker.write(task)
                    pbar.update(worker.counter.value - pbar.n)
            return
        ctx = mp.get_context("spawn")  # fork would copy the caller's threads (BLAS, torch) into the workers
        counter = ctx.Value("q", 0, lock=True)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_start_pool_worker,
                                 initargs=(job, counter)) as pool:
            pending = {pool.submit(_write_in_pool, t) for t in tasks}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raises a worker's error here
                    pbar.update(counter.value - pbar.n)
            except BrokenProcessPool:
                raise OkkhorError("synth: a worker process died; when calling synthesize() from a script, guard the "
                                  "call with `if __name__ == \"__main__\":` (workers start by importing it), or "
                                  "use workers=1") from None
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
