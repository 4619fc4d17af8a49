"""Reductions over processes. Evaluation: each rank takes a disjoint shard (rank, rank + world, ...; uneven
when the size is not divisible: nothing is duplicated or dropped), then sums and feature lists are
reduced so every rank holds the statistics of the whole set. Without an initialised process group
(one process) every function is the identity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int) -> range:
    """This rank's indices of 0..n-1."""
    rank, size = world()
    return range(rank, n, size)


def all_sum(values: list[float] | np.ndarray | torch.Tensor):
    """Element-wise sum over ranks (float64), returned in the type it came in."""
    if world()[1] == 1:
        return values
    t = torch.as_tensor(np.asarray(values, dtype=np.float64) if not torch.is_tensor(values) else values.double())
    dist.all_reduce(t)
    if torch.is_tensor(values):
        return t.to(values.dtype)
    return t.numpy() if isinstance(values, np.ndarray) else t.tolist()


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of a tensor over ranks (e.g. a state update every replica must share)."""
    if world()[1] == 1:
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out / world()[1]


def all_gather(obj) -> list:
    """Every rank's object, in rank order (pickled by torch.distributed between our own processes only)."""
    if world()[1] == 1:
        return [obj]
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out
