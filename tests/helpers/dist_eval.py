"""Run under torchrun (or alone): evaluation statistics over a 7-item set, sharded unevenly across ranks.
Writes the reduced figures to argv[1] from rank 0."""
import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from vistok.dist import shard, world
from vistok.metrics.fid import StreamingStats
from vistok.metrics.image import ReconstructionMeter

if __name__ == "__main__":
    if "--dist" in sys.argv:
        dist.init_process_group("gloo")
    n = 7
    g = torch.Generator().manual_seed(0)
    images, recons = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    codes, feats = torch.randint(0, 16, (n, 4, 4), generator=g), torch.randn(n, 5, generator=g)
    meter, stats = ReconstructionMeter(16), StreamingStats(keep_features=True)
    mine = list(shard(n))
    meter.update(images[mine], recons[mine], codes[mine])
    stats.update(feats[mine])
    rec = meter.compute()
    mu, sigma = stats.sync().mu_sigma()
    out = {"rank_items": len(mine), "world": world()[1], "psnr": rec["psnr"], "ssim": rec["ssim"], "n": rec["num_images"],
           "usage": rec["codebook_usage"], "perplexity": rec["perplexity"], "mu": mu.tolist(), "sigma": sigma.tolist(),
           "features": sorted(np.concatenate(stats.features).sum(1).tolist())}
    if world()[0] == 0:
        json.dump(out, open(sys.argv[1], "w"))
    if dist.is_initialized():
        dist.destroy_process_group()  # exiting with live gloo threads aborts ("terminate called without an active exception")
