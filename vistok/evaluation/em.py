"""Neuron segmentation from affinities and its metrics (the EM literature's: VOI and ARAND, via scikit-image).

- ``segment``: predicted affinities (z, y, x) -> a label volume: per-section seeded watershed (scikit-image) on
  the in-plane affinities, sections linked where the z-affinity says so. Every voxel gets a label (>= 1).
- ``voi``: variation of information = H(seg | gt) + H(gt | seg) in bits (scikit-image uses log2), voxels whose
  ground truth is 0 ignored; lower is better, 0 is perfect.
- ``arand``: adapted Rand error (scikit-image ``adapted_rand_error``: 1 - the F-score of Rand precision and
  recall), gt 0 ignored.
"""
from __future__ import annotations

import numpy as np
import torch

from vistok.evaluation.task import Task
from vistok.registry import register_task


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
            from vistok.evaluation.distributed import all_sum

            sums = all_sum(sums)
        n = max(sums[2], 1.0)
        return {"voi": sums[0] / n, "arand": sums[1] / n, "num_volumes": int(sums[2])}


@register_task("em")
class EMTask(Task):
    help = "EM segmentation: VOI (bits) / ARAND of a segmentation run on its held-out volumes (watershed + z linking)"

    @classmethod
    def add_arguments(cls, p) -> None:
        p.add_argument("--model", required=True, help="a training run of a segmentation model (e.g. tokenunify_seg)")
        p.add_argument("--max-volumes", type=int, default=0, help="0: every held-out volume")

    @classmethod
    def run(cls, args) -> dict:
        from vistok.data.base import build_dataset
        from vistok.pipeline import model_from_run

        model, cfg, info = model_from_run(args.model)
        if getattr(model, "kind", None) != "em":
            raise ValueError(f"--model {args.model}: a '{model.model_type}' model is not an EM segmentation model")
        data = build_dataset(cfg.data, "test")
        n = min(len(data), args.max_volumes) if args.max_volumes else len(data)
        batches = ({k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in data[i].items()} for i in range(n))
        with torch.no_grad():
            result = model.evaluate(batches)
        return {**result, "checkpoint": info["checkpoint"], "protocol": "VOI in bits (gt 0 ignored), ARAND; section-wise "
                "seeded watershed on the in-plane affinities, sections linked by the z-affinity"}

