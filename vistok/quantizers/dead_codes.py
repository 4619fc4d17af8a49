"""Re-seeding dead codes of codebooks learnt by gradients (vector-quantize-pytorch does it for EMA codebooks).

An index whose use (an EMA of its count per step) falls below ``threshold`` gets, in every table that
shares the index, a feature of the current batch; rank 0 chooses and broadcasts under DDP, counts are
averaged over ranks, so every replica stays identical.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


@torch.no_grad()
def reseed_dead_codes(usage: torch.Tensor, codes: torch.Tensor, threshold: float, decay: float,
                      tables: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """usage: K buffer (updated in place); codes: N chosen indices; tables: (codebook K,d parameter, features N,d).
    Returns how many codes were re-seeded."""
    counts = torch.bincount(codes.flatten(), minlength=usage.numel()).float()
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.all_reduce(counts)
        counts /= dist.get_world_size()
    usage.mul_(decay).add_(counts, alpha=1 - decay)
    dead = (usage < threshold).nonzero()[:, 0]
    if dead.numel() == 0:
        return 0
    pick = torch.randint(0, tables[0][1].shape[0], (dead.numel(),), device=codes.device)
    for table, feats in tables:
        new = feats[pick].detach().clone().to(table.dtype)
        if distributed:
            dist.broadcast(new, 0)
        table.data[dead] = new
    usage[dead] = 2.0 * threshold  # a grace period before the same index can be re-seeded again
    return int(dead.numel())
