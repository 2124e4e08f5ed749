"""Several processes over one job, on PyTorch's own engine: ``torchrun`` (or SLURM's
``srun`` setting the same variables) starts the ranks, ``torch.distributed`` joins them.

A restoring command splits the sorted inputs into shares, the same rule for a torchrun
rank and for ``--shard K/N`` without torch.distributed (``share``); each process writes
its own outputs, so nothing is written twice, and rank 0 reports what every rank did
(``gather``). ``train-prior`` wraps its networks in DistributedDataParallel.

Only the standard library at import: the command line reads ``launched()`` while
planning, before torch is imported; the functions that need torch import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """Which process this is, as torchrun's environment says."""

    rank: int  # among all processes, on all nodes
    world_size: int
    local_rank: int  # among the processes of this node: the GPU it takes


def launched() -> Launch | None:
    """This process's rank when torchrun started several (WORLD_SIZE > 1); else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return Launch(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def share(items: Sequence[T], index: int, count: int, key: Callable[[T], str] = str) -> list[T]:
    """The ``index``-th (0-based) of ``count`` shares of ``items``: every ``count``-th item
    in the order of ``key``, from the ``index``-th on, so the shares differ in size by at
    most one; kept in the order given. Together the shares hold every item once."""
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    chosen = set(order[index::count])
    return [item for i, item in enumerate(items) if i in chosen]


def join(launch: Launch, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device: ``cuda:LOCAL_RANK``
    when ``device`` is CUDA (one GPU per process on a node), else ``device``. NCCL links
    CUDA ranks, gloo CPU ones; every rank decides from the same --device, so all agree."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def leave() -> None:
    """Leave the process group, when this process joined one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
