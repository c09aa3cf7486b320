"""One cell over several processes: `torchrun --nproc_per_node=K run_ablation.py ...` trains each
cell with DistributedDataParallel (gloo on the CPU, NCCL on GPUs).

Every rank draws the same epoch (order, crops, flips, lighting) and takes its contiguous share
of each batch of the profile's `batch_size`; the loss is scaled so that the averaged gradient is
the whole batch's, and dropout draws the whole batch's mask and keeps its rows (core/model.py),
so K processes train what one process trains, up to floating-point noise. Validation is split
between the ranks and its counts summed. Rank 0 alone reads and writes checkpoints and MLflow.
Outside torchrun every function here is the single-process identity.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

# how long a rank waits at a collective: local rank 0 may be building the data cache meanwhile
TIMEOUT = timedelta(hours=6)
_shard: tuple[int, int] | None = None


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group torchrun set up (NCCL when CUDA is available, else gloo)."""
    if launched() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if size() > 1:
        dist.barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (picklable)."""
    if size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks (in place)."""
    if size() > 1:
        dist.all_reduce(t)
    return t


def part(n: int) -> tuple[int, int]:
    """This rank's contiguous share [lo, hi) of n items."""
    r, k = rank(), size()
    return r * n // k, (r + 1) * n // k


@contextlib.contextmanager
def batch_shard(offset: int, total: int):
    """While training on rows offset.. of a batch of `total` rows split between the ranks."""
    global _shard
    _shard = (offset, total) if size() > 1 else None
    try:
        yield
    finally:
        _shard = None


def shard() -> tuple[int, int] | None:
    """(offset, total) of the batch being trained, under torchrun; None otherwise."""
    return _shard


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun (it broadcasts rank 0's weights)."""
    if size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
