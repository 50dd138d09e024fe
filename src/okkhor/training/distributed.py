"""Devices and processes: the one device resolver, torchrun's process group, rank-0 output, unpadded shards."""
from __future__ import annotations

import contextlib
import gc
import os
import re
from typing import Iterator

import numpy as np
import torch

from okkhor.errors import OkkhorError


def launched_world_size() -> int:
    """The number of processes torchrun (or another launcher setting WORLD_SIZE) started; 1 otherwise."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve_device(name: str | torch.device = "auto", key: str = "train.device") -> torch.device:
    """auto, cpu, cuda or cuda:N (`key` names the option in errors) -> a torch device: auto is cuda when one is
    available; cuda is the process's local GPU (LOCAL_RANK under torchrun, else 0), made the current device."""
    if isinstance(name, torch.device):
        return name
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise OkkhorError(f"{key} {name!r}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OkkhorError(f"{key}={name}: no CUDA device is available; use {key}=cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(name.split(":")[1]) if ":" in name else int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", index % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[None]:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on GPUs) for the block,
    through ignite's `idist.Parallel`. Does nothing when there is one process or a group already exists."""
    import ignite.distributed as idist

    if launched_world_size() == 1 or idist.get_world_size() > 1:
        yield
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        resolve_device(device_name)
    with idist.Parallel(backend="nccl" if use_cuda else "gloo"):
        try:
            yield
        finally:
            # The DDP model (and its reducer, which holds the group) sits in reference cycles through the engines'
            # handlers, so without this it is freed by a later cyclic collection, which can fall in interpreter
            # shutdown: gloo's threads are then torn down without the GIL and the process aborts (SIGABRT) after
            # training has finished, and the other launcher waits at torchrun's exit barrier. Free it here, while
            # the group is still up and the interpreter whole.
            gc.collect()


def rank() -> int:
    import ignite.distributed as idist

    return idist.get_rank()


def world_size() -> int:
    import ignite.distributed as idist

    return idist.get_world_size()


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    import ignite.distributed as idist

    if idist.get_world_size() > 1:
        idist.barrier()


def shard(indices: np.ndarray, rank_: int, world: int) -> np.ndarray:
    """This process's share of an evaluation set: every world-th sample, no padding, no sample twice."""
    return np.asarray(indices)[rank_::world]


def broadcast_error(message: str | None) -> str | None:
    """Share rank 0's error message (or None) with every process, so all of them stop on a rank-0 failure."""
    import ignite.distributed as idist

    if idist.get_world_size() == 1:
        return message
    return idist.broadcast(message or "", src=0, safe_mode=True) or None


def sync_buffers(*modules: torch.nn.Module | None) -> None:
    """Give every process the first process's buffers (batch-norm statistics). DDP broadcasts them before each
    forward, but each process then updates them with its own batch, so after an epoch they differ a little between
    processes; evaluating or saving without this would score each share of the valid set with other statistics
    than the checkpoint holds."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    for module in modules:
        if module is not None:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)
