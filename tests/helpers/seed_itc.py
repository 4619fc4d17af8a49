"""Stage-I contrastive loss of a tiny SEED on a fixed global batch of 16 ShapesWorld pairs: one process holds all
16, or each of 2 (torchrun, gloo) holds 8; writes {"loss": mean over ranks, "world": n} to argv[1]."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.test_seed import batch_of, tiny_seed  # noqa: E402

if __name__ == "__main__":
    out, teacher = sys.argv[1], sys.argv[2]
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(0)
    model = tiny_seed(teacher)
    batch = batch_of(16)
    n = 16 // size
    shard = {"image": batch["image"][rank * n:(rank + 1) * n], "caption": batch["caption"][rank * n:(rank + 1) * n]}
    loss = model(shard)["loss"].detach()
    if size > 1:
        dist.all_reduce(loss)
        loss /= size
    if rank == 0:
        json.dump({"loss": float(loss), "world": size}, open(out, "w"))
    if dist.is_initialized():
        dist.destroy_process_group()
