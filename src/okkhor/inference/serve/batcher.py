"""Micro-batching: the images of requests that arrive within a few milliseconds run as one forward pass."""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from okkhor.errors import OkkhorError

MAX_BATCH = 64          # images in one forward pass
MAX_WAIT_S = 0.005      # how long the first request of a batch waits for others
MAX_QUEUED = 1024       # images waiting or running; more are refused (503) so that memory stays bounded

log = logging.getLogger("okkhor.serve")


class Busy(OkkhorError):
    """The queue is full: the client should retry later (HTTP 503)."""


@dataclass
class _Job:
    pages: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread runs `fn(pages [n, ...]) -> n answers` over the jobs submitted: it takes the first job
    waiting, collects more for up to `max_wait` seconds or until `max_batch` images, runs `fn` once on all of
    them and resolves each job's future with its own answers, in order. A job is never split; one with more than
    `max_batch` images runs alone. `forwards` and `images` count the calls of `fn` and the images they saw."""

    def __init__(self, fn: Callable[[np.ndarray], list[Any]], max_batch: int = MAX_BATCH,
                 max_wait: float = MAX_WAIT_S, max_queued: int = MAX_QUEUED):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        if max_queued < max_batch:
            raise ValueError(f"max_queued ({max_queued}) must be >= max_batch ({max_batch})")
        self.fn, self.max_batch, self.max_wait, self.max_queued = fn, max_batch, max_wait, max_queued
        self.forwards = self.images = 0
        self.largest = 0   # the most images one forward pass took
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="okkhor-batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Images submitted and not yet answered."""
        return self._queued

    def submit(self, pages: np.ndarray) -> Future:
        """A future of the answers for `pages` [n, ...]; Busy when max_queued images already wait."""
        job = _Job(pages)
        with self._lock:
            if not self._thread.is_alive():
                raise OkkhorError("the batcher is closed")
            if self._queued + len(pages) > self.max_queued:
                raise Busy(f"busy: {self._queued} images queued (limit {self.max_queued}); retry shortly")
            self._queued += len(pages)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish the jobs already submitted, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """(jobs of one batch, a job that did not fit (the next batch's first), whether close was asked)."""
        jobs, size = [first], len(first.pages)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if size + len(job.pages) > self.max_batch:
                return jobs, job, False
            jobs.append(job)
            size += len(job.pages)
        return jobs, None, False

    def _run(self) -> None:
        carry: _Job | None = None
        closing = False
        while True:
            first = carry if carry is not None else (None if closing else self._queue.get())
            if first is None:
                return
            jobs, carry, stop = self._collect(first)
            closing = closing or stop
            self._forward(jobs)

    def _forward(self, jobs: list[_Job]) -> None:
        pages = np.concatenate([job.pages for job in jobs]) if len(jobs) > 1 else jobs[0].pages
        answers, error = None, None
        try:
            answers = self.fn(pages)
        except Exception as exc:  # every waiting request gets the failure; the worker keeps serving
            log.exception("forward pass of %d images failed", len(pages))
            error = exc
        with self._lock:   # counted before any request hears back, so that /health agrees with the answers
            self._queued -= len(pages)
            self.forwards += 1
            self.images += len(pages)
            self.largest = max(self.largest, len(pages))
        start = 0
        for job in jobs:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(answers[start:start + len(job.pages)])
            start += len(job.pages)
