"""EM segmentation from predicted affinities (seeded watershed + agglomeration) and its scores, VOI and
adapted Rand error (scikit-image's, CREMI's conventions), summed over ranks by ``SegmentationMeter``."""
from __future__ import annotations

import numpy as np
import torch



def segment(aff: torch.Tensor | np.ndarray, seed_threshold: float = 0.9, merge_threshold: float = 0.5,
            min_seed: int = 4) -> np.ndarray:
    """Affinities 3,D,H,W (z, y, x) -> labels D,H,W (>= 1): per-slice seeded watershed on the in-plane
    affinities, then 2-D segments of adjacent slices are merged where the z-affinity summed over their overlap
    exceeds ``merge_threshold`` times the smaller segment's size (a small agglomeration in the spirit of waterz;
    serial-section EM is anisotropic, so seeds come from each section and z only links them)."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    a = aff.detach().float().cpu().numpy() if torch.is_tensor(aff) else np.asarray(aff, np.float32)
    inplane = a[1:].mean(0)
    d = inplane.shape[0]
    seg = np.zeros(inplane.shape, np.int64)
    offset = 0
    for z in range(d):  # 2-D seeded watershed per section
        seeds, n = ndimage.label(inplane[z] > seed_threshold)
        if n:
            sizes = np.bincount(seeds.ravel())
            seeds[sizes[seeds] < min_seed] = 0
        if not seeds.any():
            seg[z] = offset + 1
        else:
            seg[z] = watershed(1.0 - inplane[z], seeds) + offset
        offset = int(seg[z].max())
    parent = np.arange(offset + 1)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sizes = np.bincount(seg.ravel(), minlength=offset + 1)
    for z in range(1, d):  # link sections: z-affinity summed over each overlapping pair of 2-D segments
        upper, lower, zaff = seg[z].ravel(), seg[z - 1].ravel(), a[0, z].ravel()
        pairs = upper * (offset + 1) + lower
        keys, inv = np.unique(pairs, return_inverse=True)
        linked = np.bincount(inv, weights=zaff)
        smaller = np.minimum(sizes[keys // (offset + 1)], sizes[keys % (offset + 1)])
        for key, m in zip(keys, linked / smaller):  # the share of the smaller segment that continues into the other
            if m > merge_threshold:
                ra, rb = find(int(key // (offset + 1))), find(int(key % (offset + 1)))
                if ra != rb:
                    parent[ra] = rb
    roots = np.array([find(i) for i in range(offset + 1)])
    _, relabelled = np.unique(roots[seg], return_inverse=True)
    return relabelled.reshape(seg.shape).astype(np.int64) + 1


def voi(gt: np.ndarray, seg: np.ndarray) -> float:
    from skimage.metrics import variation_of_information

    split, merge = variation_of_information(np.asarray(gt), np.asarray(seg), ignore_labels=[0])
    return float(split + merge)


def arand(gt: np.ndarray, seg: np.ndarray) -> float:
    from skimage.metrics import adapted_rand_error

    return float(adapted_rand_error(np.asarray(gt), np.asarray(seg), ignore_labels=[0])[0])


class SegmentationMeter:
    """VOI / ARAND per volume, averaged (summed over ranks)."""

    def __init__(self, seed_threshold: float = 0.9):
        self.seed_threshold, self.rows = seed_threshold, []

    def update(self, aff: torch.Tensor, labels: torch.Tensor) -> None:
        for a, gt in zip(aff, labels):
            seg = segment(a, self.seed_threshold)
            g = gt.cpu().numpy()
            self.rows.append({"voi": voi(g, seg), "arand": arand(g, seg), "segments": int(seg.max())})

    def compute(self, sync: bool = False) -> dict:
        sums = [sum(r["voi"] for r in self.rows), sum(r["arand"] for r in self.rows), float(len(self.rows))]
        if sync:
            from vistok.dist import all_sum

            sums = all_sum(sums)
        n = max(sums[2], 1.0)
        return {"voi": sums[0] / n, "arand": sums[1] / n, "num_volumes": int(sums[2])}
