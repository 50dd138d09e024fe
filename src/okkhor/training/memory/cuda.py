"""The CUDA probe: the real training step metered in this process by `torch.cuda.max_memory_allocated`, on the
trainer's own model (its weights, buffers, training flag and the RNG states are put back afterwards)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from okkhor.config import Config
from okkhor.targets import Targets
from okkhor.training.memory.steps import Measured, ProgressFn, train_steps


class CudaMeter:
    """Peak bytes this process's CUDA allocator handed out since the last reset."""

    def __init__(self, device: Any):
        self.device = device

    def reset(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> int:
        import torch

        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


def measure_cuda(model, cfg: Config, targets: Targets, device, batch: int) -> Optional[dict[str, int]]:
    """Peaks of the metered steps in this process (None: out of memory)."""
    from okkhor.training.oom import free_memory, is_oom

    free_memory(model)
    result = None
    try:
        result = train_steps(model, cfg, targets, device, batch, CudaMeter(device))
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are swallowed
        if not is_oom(exc):
            raise
    free_memory(model)
    return result


def measure_here(model: Any, cfg: Config, targets: Targets, device: Any, batches: Sequence[int],
                 progress: ProgressFn = None,
                 measure: Callable[..., Optional[dict[str, int]]] = measure_cuda) -> tuple[Measured, Optional[int]]:
    """Each batch size in this process, on `model` or on one built from the config; the model's weights, buffers
    and training flag and the RNG states are put back afterwards. Stops at the first batch size that runs out of
    memory and returns it as the second value."""
    import torch

    own = model is None
    if own:
        from dataclasses import replace

        from okkhor.training.setup import build_net

        torch.manual_seed(0)
        # probed without the grapheme head (it needs the training graphemes): one small layer
        model = build_net(replace(cfg.model, grapheme_head=False), targets, device, bool(cfg.train.channels_last))
    model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
    saved = None if own else {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    measured: Measured = []
    failed = None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch in batches:
                result = measure(model, cfg, targets, device, batch)
                if progress:
                    progress(batch, None if result is None else result["peak"])
                if result is None:
                    failed = batch
                    break
                measured.append((batch, result))
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        model.train(was_training)
    return measured, failed
