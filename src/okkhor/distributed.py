"""Processes for multi-process training: device choice, torchrun's process group, rank-0 output, unpadded shards."""
from __future__ import annotations

import contextlib
import os
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


def pick_device(name: str) -> torch.device:
    """`train.device` (auto/cpu/cuda) -> a torch device; with several processes, the process's local GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise OkkhorError("train.device=cuda: no CUDA device is available; use train.device=cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[None]:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on GPUs), for the block.

    Does nothing when there is one process or a group already exists (e.g. under idist.Parallel).
    """
    import ignite.distributed as idist

    if launched_world_size() == 1 or idist.get_world_size() > 1:
        yield
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        pick_device(device_name)
    idist.initialize("nccl" if use_cuda else "gloo")
    try:
        yield
    finally:
        idist.finalize()


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
