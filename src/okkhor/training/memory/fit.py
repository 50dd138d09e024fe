"""Memory sizes and the fitted line: parse `6GiB`, fit fixed + per-sample bytes to measured peaks, choose the
micro-batch and accumulation that fit a budget."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from okkhor.errors import OkkhorError

HEADROOM = 0.9          # share of the budget the predicted peak may use (fragmentation, context, workspaces)
MAX_BATCH = 1 << 16     # cap when the per-sample cost is too small to resolve

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """Bytes of a size: `6GB` (10^9), `6GiB` or `6G` (2^30), `512MB`, `1.5g`, or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise OkkhorError(f"size {text!r}: expected a number with an optional unit, like 6GB, 6GiB, 512MB or "
                              f"1.5G (KB/MB/GB/TB are powers of 1000; K/M/G/T and KiB/MiB/GiB/TiB of 1024)")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise OkkhorError(f"size {text!r}: must be more than 0 bytes")
    return size


def format_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fit_line(batches: Sequence[int], peaks: Sequence[float]) -> tuple[float, float]:
    """Least-squares (fixed, per_sample) with peak ~= fixed + per_sample * batch."""
    if len(batches) != len(peaks):
        raise ValueError(f"{len(batches)} batch sizes for {len(peaks)} peaks")
    if len(set(batches)) < 2:
        raise OkkhorError("memory: need measurements at two or more different batch sizes to fit a line")
    n = len(batches)
    mean_b, mean_p = sum(batches) / n, sum(peaks) / n
    var = sum((b - mean_b) ** 2 for b in batches)
    per_sample = sum((b - mean_b) * (p - mean_p) for b, p in zip(batches, peaks, strict=False)) / var
    return mean_p - per_sample * mean_b, per_sample


@dataclass
class MemoryFit:
    """Measured training-step peaks (bytes) at some batch sizes and the model fitted to them.

    A step has two peaks: during forward/backward (weights, optimizer state, gradients and the activations, which
    grow with the batch) and during the optimizer step (weights, gradients, optimizer state and its temporaries,
    which do not). The first is fitted by least squares as fixed + per_sample * batch; the prediction is the larger
    of that line and the largest optimizer-step peak measured. At small batches the optimizer step is often the
    higher one: fitting a single line through the overall peaks would then see no growth and predict far too much
    room at large batches.
    """

    model: str
    image_size: Any                        # a side, or [H, W]
    precision: str
    device: str
    method: str
    batches: list[int]
    peaks: list[int]                       # overall peak of the two steps, per batch size
    backward_peaks: list[int]              # peak of the forward/backward of the second step, per batch size
    optimizer_bytes: int                   # the largest optimizer-step peak
    fixed_bytes: float
    per_sample_bytes: float
    failed_batch: Optional[int] = None     # a batch size that ran out of memory while probing (CUDA)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def fitted(cls, model: str, image_size: Any, precision: str, device: str, method: str,
               measured: Sequence[tuple[int, dict[str, int]]], **extra: Any) -> "MemoryFit":
        """The fit through (batch, {"peak", "backward", "optimizer"}) measurements."""
        batches = [b for b, _ in measured]
        backward = [m["backward"] for _, m in measured]
        return cls(model, image_size, precision, device, method, batches, [m["peak"] for _, m in measured],
                   backward, max(m["optimizer"] for _, m in measured), *fit_line(batches, backward), **extra)

    def predict(self, batch: int) -> float:
        return max(self.fixed_bytes + self.per_sample_bytes * batch, float(self.optimizer_bytes))

    def max_batch(self, budget: int, headroom: float = HEADROOM) -> int:
        """The largest batch whose predicted peak is within `headroom * budget` (0 when none is)."""
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        usable = headroom * budget
        room = usable - self.fixed_bytes
        if self.optimizer_bytes > usable or room < self.per_sample_bytes:
            return 0
        per_sample = max(self.per_sample_bytes, room / MAX_BATCH)
        largest = math.floor(room / per_sample + 1e-9)  # 1e-9: 0.9 * budget is not exact in binary
        if self.failed_batch is not None:
            largest = min(largest, self.failed_batch - 1)
        return max(0, min(largest, MAX_BATCH))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "image_size": self.image_size, "precision": self.precision,
                "device": self.device, "method": self.method, "batches": list(self.batches),
                "measured_bytes": list(self.peaks),
                "predicted_bytes": [round(self.predict(b)) for b in self.batches],
                "backward_peak_bytes": list(self.backward_peaks), "optimizer_step_bytes": self.optimizer_bytes,
                "fixed_bytes": round(self.fixed_bytes), "per_sample_bytes": round(self.per_sample_bytes),
                "failed_batch": self.failed_batch, "notes": list(self.notes)}


def plan_batch(max_batch: int, effective: int = 0) -> tuple[int, int]:
    """(micro-batch, accumulation steps) for the largest batch that fits and the effective batch to reach.

    With an effective batch: its largest divisor that fits, when that is at least half of what fits (so the
    effective batch is exact); else the smallest micro-batch with the fewest accumulation steps. Without one: the
    largest fitting multiple of 8. Always micro * accum >= effective.
    """
    if max_batch < 1:
        raise OkkhorError("memory: not even a batch of 1 fits the budget")
    if effective <= 0:
        return (max_batch - max_batch % 8 if max_batch >= 8 else max_batch), 1
    if max_batch >= effective:
        return effective, 1
    for micro in range(max_batch, max_batch // 2, -1):
        if effective % micro == 0:
            return micro, effective // micro
    accum = math.ceil(effective / max_batch)
    return math.ceil(effective / accum), accum
