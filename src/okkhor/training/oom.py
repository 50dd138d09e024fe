"""Out-of-memory recovery: recognise the error and redo a micro-batch in smaller chunks."""
from __future__ import annotations

import gc
import math
from typing import Any, Callable, Optional

from okkhor.errors import OkkhorError

# messages of out-of-memory errors raised as plain RuntimeError (CPU allocator, cuBLAS/cuDNN workspaces, MPS)
OOM_MESSAGES = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")

# micro_step(x, y, weight) -> loss: forward, loss (mean over the chunk) and backward of weight * loss
MicroStep = Callable[[Any, Any, float], Any]


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an out-of-memory error (torch.OutOfMemoryError or a RuntimeError saying so)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)


def free_memory(model: Any = None) -> None:
    """Drop the model's gradients (when given), collect garbage and return cached CUDA blocks to the driver."""
    import torch

    if model is not None:
        for p in model.parameters():
            p.grad = None
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class OomRecovery:
    """Runs one micro-batch's forward and backward; on out-of-memory, frees memory and redoes it in chunks.

    `run(micro_step, x, y, iteration)` calls `micro_step(x_chunk, y_chunk, weight)`, which must run the forward,
    the loss (a mean over the chunk) and the backward of `weight * loss`, and return the loss. With no error there
    is one call on the whole batch with weight 1. After an out-of-memory error the chunk size is halved and the
    samples not yet done are redone in chunks weighted by their share of the batch, so the gradients add up to the
    whole batch's: the update equals the unsplit one when each sample's loss depends on that sample alone (no batch
    norm statistics, no OHEM across the batch, no mixing partners; otherwise it is the same in expectation).

    Gradients that were accumulated before the failed call are kept when the failure left them untouched (checked
    by tensor identity and version); a failure in the middle of a backward that had begun adding to earlier
    micro-batches' gradients cannot be undone, so those are dropped and the loss is logged.

    The batch plan (any object with integer `batch_size` and `accum`) changes at the end of the epoch (`attach`):
    batch_size becomes the chunk size and accum grows so batch_size * accum stays at least the old effective batch.
    Until then the epoch's remaining batches, cut with the old size, run in chunks. One log line per failure.
    In a multi-process run the other processes cannot follow a split, so there the error is re-raised as one line.
    """

    def __init__(self, plan: Any, model: Any, *, injector: Optional[Callable[[int], None]] = None,
                 log: Callable[[str], None] = print, min_batch: int = 1):
        for name in ("batch_size", "accum"):
            if not isinstance(getattr(plan, name, None), int):
                raise TypeError(f"plan must have an int {name}, got {type(plan).__name__}")
        if not hasattr(model, "parameters"):
            raise TypeError(f"model must be a torch module, got {type(model).__name__}")
        if injector is not None and not callable(injector):
            raise TypeError(f"injector must be callable or None, got {type(injector).__name__}")
        if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 1:
            raise ValueError(f"min_batch must be an int >= 1, got {min_batch!r}")
        self.plan, self.model, self.injector, self.log, self.min_batch = plan, model, injector, log, min_batch
        self.chunk: Optional[int] = None   # the micro-batch size that runs, once one has failed; None: no limit
        self._effective: Optional[int] = None
        self._params = None

    # ---- the step
    def run(self, micro_step: MicroStep, x: Any, y: Any, iteration: int = 0) -> Any:
        """Forward and backward of the batch (x, y) through `micro_step`; returns the batch's mean loss."""
        n = int(x.shape[0])
        start, total = 0, None
        while start < n:
            size = n - start if self.chunk is None else min(n - start, self.chunk)
            end = start + size
            if n - end == 1 and size > 1:
                end += 1  # never leave a single-sample chunk behind (batch norm cannot train on one)
            before = self._grad_versions()
            try:
                if self.injector is not None:
                    self.injector(iteration)
                loss = micro_step(x[start:end], y[start:end], (end - start) / n)
            except Exception as exc:  # noqa: BLE001 - everything but out-of-memory is re-raised
                if not is_oom(exc):
                    raise
                failed = end - start
            else:
                part = loss.detach() * ((end - start) / n)
                total = part if total is None else total + part
                start = end
                continue
            # outside the except block: the traceback (and the activations it holds) is gone
            self._recover(failed, before, iteration)
        return total

    __call__ = run

    def _parameters(self) -> list:
        if self._params is None:
            self._params = [p for p in self.model.parameters() if p.requires_grad]
        return self._params

    def _grad_versions(self) -> list:
        return [None if p.grad is None else (p.grad, p.grad._version) for p in self._parameters()]

    def _recover(self, failed: int, before: list, iteration: int) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise OkkhorError(f"train: out of memory at iteration {iteration} with a micro-batch of {failed}; a "
                              "multi-process run cannot recover; set a smaller train.batch_size (or batch_size=auto)")
        smaller = failed // 2
        if smaller < self.min_batch:
            raise OkkhorError(f"train: out of memory at iteration {iteration} even with a micro-batch of {failed}; "
                              "use a smaller model, image size or train.amp=bf16, or free the device")
        params = self._parameters()
        touched = any((p.grad is not None) if old is None else (p.grad is not old[0] or p.grad._version != old[1])
                      for p, old in zip(params, before, strict=False))
        lost = ""
        if touched:
            earlier = any(old is not None for old in before)
            for p in params:
                p.grad = None
            if earlier:
                lost = "; the gradients of this accumulation group's earlier micro-batches were lost"
        free_memory()
        if self._effective is None:
            self._effective = self.plan.batch_size * self.plan.accum
        self.chunk = smaller
        accum = math.ceil(self._effective / smaller)
        self.log(f"train: out of memory at iteration {iteration} with a micro-batch of {failed}; redoing it in "
                 f"micro-batches of {smaller}, and from the next epoch batch {smaller} x accum {accum}{lost}")

    # ---- the plan
    def apply_plan(self, engine: Any = None) -> None:
        """Make the chunk size the plan's batch size (accum grows to keep the effective batch); an epoch handler."""
        if self.chunk is None or self._effective is None:
            return
        self.plan.batch_size = self.chunk
        self.plan.accum = math.ceil(self._effective / self.chunk)
        self.chunk, self._effective = None, None

    def attach(self, engine: Any) -> "OomRecovery":
        """Apply the new plan at EPOCH_COMPLETED (its place among the trainer's handlers: handlers.attach_handlers)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.apply_plan)
        return self
