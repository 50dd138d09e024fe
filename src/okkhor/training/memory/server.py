"""The CPU probe server: a process that imported torch, timm and okkhor once and forks one fresh child per
measurement, which meters the real training step by its peak anonymous resident memory.

The server (`python -m okkhor.training.memory.server`) imported torch, timm and okkhor but ran no torch operation.
The child resets its peak resident set size (/proc/self/clear_refs, "5"), builds the model, runs the steps and reads
VmHWM. A fresh process because glibc keeps freed heap pages resident: in one process a second measurement would reuse
the first one's pages and read too low. The server runs with a fixed mmap threshold, so large tensors are mapped
and unmapped one by one and RSS follows the live bytes (with glibc's dynamic threshold the peaks jumped by tens of
MB with the heap layout). Resetting VmHWM rather than comparing ru_maxrss keeps import-time transients out;
forking from one server pays the import (seconds) once instead of per batch size. The trainer's own heap may hold
some freed pages beyond this: the headroom covers that.
"""
from __future__ import annotations

import gc
import json
import os
import re
import select
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from okkhor.config import Config, config_from_dict
from okkhor.errors import OkkhorError
from okkhor.targets import Targets
from okkhor.training.memory.steps import Measured, ProgressFn, train_steps

CHILD_TIMEOUT_S = 600


class RssMeter:
    """Peak anonymous resident memory of this process since the last reset, above what it held at creation.

    VmHWM counts file-backed pages too (library code that a forked child faults in again); those are shared and
    reclaimable, so they are taken out: peak = VmHWM - RssFile - RssShmem now, less RssAnon at creation. Each
    phase's code is touched before its peak, so file pages added after the peak are few.
    """

    def __init__(self) -> None:
        self.reset()
        self.base = _read_status("RssAnon")

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # VmHWM := the current RSS
        except OSError as exc:
            raise OkkhorError(f"memory: cannot reset the peak RSS (/proc/self/clear_refs: {exc.strerror}); CPU "
                              "memory probing needs Linux") from None

    def read(self) -> int:
        return _read_status("VmHWM") - _read_status("RssFile", "RssShmem") - self.base


def _read_status(*keys: str) -> int:
    """Sum of /proc/self/status fields (kB) in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        text = f.read()
    total = 0
    for key in keys:
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if not match:
            raise OkkhorError(f"memory: /proc/self/status has no {key}")
        total += int(match.group(1)) * 1024
    return total


def _measure_cpu_here(cfg: Config, targets: Targets, batch: int) -> dict[str, int]:
    """In a fresh process: the metered steps on a model built here (its weights count in every phase)."""
    from dataclasses import replace

    import torch

    # every import before the baseline: only the model and the steps count
    from okkhor.training.setup import build_net

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same memory (no per-thread buffers of note); spinning threads are slow
    gc.collect()
    meter = RssMeter()
    # probed without the grapheme head (it needs the training graphemes): one small layer
    model = build_net(replace(cfg.model, grapheme_head=False), targets, "cpu", bool(cfg.train.channels_last))
    return train_steps(model, cfg, targets, torch.device("cpu"), batch, meter)


class ForkServer:
    """A Python process that imports torch, timm and okkhor once, then forks one fresh child per measurement.

    The server runs no torch operation itself, so forking it is safe (no thread pools yet) and every child starts
    from the same clean heap; the import cost is paid once instead of once per batch size.
    """

    def __init__(self) -> None:
        # a fixed mmap threshold (glibc's initial 128 KiB; setting it turns off the dynamic raise): every large
        # tensor is mapped and unmapped on its own, so RSS follows the live bytes, as max_memory_allocated does
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
        self.stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # a pipe could fill up
        self.proc = subprocess.Popen([sys.executable, "-m", "okkhor.training.memory.server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)

    def measure(self, cfg: Config, targets: Targets, batch: int) -> dict[str, int]:
        request = json.dumps({"config": cfg.to_dict(), "targets": targets.to_dict(), "batch": batch})
        line = ""
        try:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
            if select.select([self.proc.stdout], [], [], CHILD_TIMEOUT_S)[0]:
                line = self.proc.stdout.readline()
        except OSError:
            pass
        result = json.loads(line) if line.startswith("{") else {}
        if "peak" not in result:
            detail = result.get("error")
            if not detail:
                self.proc.kill()
                self.proc.wait()
                self.stderr.seek(0)
                detail = (self.stderr.read().strip().splitlines() or [f"no answer in {CHILD_TIMEOUT_S} s"])[-1]
            raise OkkhorError(f"memory: measuring batch {batch} on cpu failed: {detail}")
        return {k: int(v) for k, v in result.items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=CHILD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()


def _serve() -> int:
    """The fork server's loop: one JSON request per stdin line, one JSON result per stdout line."""
    import timm.utils  # noqa: F401
    import torch  # noqa: F401 - every import before the fork: the children measure only the model and the steps

    import okkhor.models.model  # noqa: F401
    import okkhor.training.memory.steps  # noqa: F401
    import okkhor.training.step  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report on the pipe, exit without the server's cleanup
            os.close(read)
            os.dup2(2, 1)  # stray prints must not reach the server's protocol stream
            try:
                request = json.loads(line)
                result = _measure_cpu_here(config_from_dict(request["config"]),
                                           Targets.from_dict(request["targets"]), int(request["batch"]))
            except OkkhorError as exc:
                result = {"error": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            reply = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write((reply or json.dumps({"error": f"the measuring process died (wait status {status})"}))
                         + "\n")
        sys.stdout.flush()
    return 0


def measure_forked(cfg: Config, targets: Targets, batches: Sequence[int],
                   progress: ProgressFn = None) -> Measured:
    """Each batch size in a fresh process forked from one server (see the module docstring)."""
    measured: Measured = []
    server = ForkServer()
    try:
        for batch in batches:
            result = server.measure(cfg, targets, batch)
            if progress:
                progress(batch, result["peak"])
            measured.append((batch, result))
    finally:
        server.close()
    return measured




if __name__ == "__main__":
    sys.exit(_serve())
