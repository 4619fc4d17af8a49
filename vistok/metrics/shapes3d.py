"""3D shape scores over point sets and occupancy grids, with the conventions of the shape-tokenizer literature:
F-score at a distance threshold (3DShape2VecSet's), Chamfer-L1 (Occupancy Networks': the mean of accuracy and
completeness, Euclidean distances), volume IoU, MMD / coverage for generation, and the bytes a code sequence costs
(VAT's count). Distances are in the [-1, 1] cube the shapes are normalised into.

Callers pass point arrays (N,3), e.g. from ``vistok.meshes.sample_surface``. An empty *prediction* (a decode that
gave no surface) is allowed where a score is defined for it: F-score 0 and Chamfer-L1 ``inf``; an empty reference
is always a ValueError.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def as_points(x, name: str, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a float64 N,3 array of finite values; ``allow_empty`` lets any zero-size array through as 0,3."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        if allow_empty:
            return x.reshape(0, 3)
        raise ValueError(f"{name}: expected a non-empty N,3 point array, got shape {x.shape}")
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected an N,3 point array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: points contain NaN or infinity")
    return x


def nearest(tree: cKDTree, points: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of ``points`` to its nearest point in ``tree``."""
    return tree.query(points, k=1)[0]


def fscore_from_distances(d_pred: np.ndarray, d_gt: np.ndarray, threshold: float) -> float:
    """F = 2PR/(P+R) with P the fraction of ``d_pred`` (pred -> gt) and R of ``d_gt`` (gt -> pred) below
    ``threshold``; 0 when both are 0 or the prediction is empty."""
    if len(d_pred) == 0:
        return 0.0
    p, r = float(np.mean(d_pred < threshold)), float(np.mean(d_gt < threshold))
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def chamfer_from_distances(d_pred: np.ndarray, d_gt: np.ndarray) -> float:
    """0.5 * (accuracy + completeness): mean pred -> gt and mean gt -> pred distances; ``inf`` for an empty pred."""
    if len(d_pred) == 0:
        return float("inf")
    return 0.5 * (float(d_pred.mean()) + float(d_gt.mean()))


def distances(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest distances pred -> gt and gt -> pred (each KD-tree built once); both empty for an empty pred."""
    if len(pred) == 0:
        return np.zeros(0), np.zeros(0)
    return nearest(cKDTree(gt), pred), nearest(cKDTree(pred), gt)


def check_threshold(threshold: float) -> float:
    if not threshold > 0:
        raise ValueError(f"threshold: expected a positive distance, got {threshold}")
    return float(threshold)


def fscore(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.02) -> float:
    """3DShape2VecSet's F-score: precision = fraction of ``pred`` points whose nearest ``gt`` point is closer than
    ``threshold``, recall = the same from ``gt`` to ``pred``, F = 2PR/(P+R) (0 if both are 0). Distances in the
    [-1, 1] cube; an empty ``pred`` scores 0."""
    threshold = check_threshold(threshold)
    pred, gt = as_points(pred, "pred", allow_empty=True), as_points(gt, "gt")
    return fscore_from_distances(*distances(pred, gt), threshold)


def chamfer_l1(pred: np.ndarray, gt: np.ndarray) -> float:
    """Occupancy Networks' Chamfer-L1: 0.5 * (mean nearest Euclidean distance pred -> gt (accuracy) + mean gt ->
    pred (completeness)); ``inf`` for an empty ``pred``."""
    pred, gt = as_points(pred, "pred", allow_empty=True), as_points(gt, "gt")
    return chamfer_from_distances(*distances(pred, gt))


def surface_metrics(pred: np.ndarray, gt: np.ndarray, thresholds=(0.01, 0.02)) -> dict:
    """``{"fscore@T": ... for T in thresholds, "chamfer_l1": ...}`` from one pair of KD-tree queries; an empty
    ``pred`` gives F-scores 0 and Chamfer-L1 ``inf``."""
    thresholds = [check_threshold(t) for t in thresholds]
    pred, gt = as_points(pred, "pred", allow_empty=True), as_points(gt, "gt")
    d_pred, d_gt = distances(pred, gt)
    out = {f"fscore@{t:g}": fscore_from_distances(d_pred, d_gt, t) for t in thresholds}
    out["chamfer_l1"] = chamfer_from_distances(d_pred, d_gt)
    return out


def volume_iou(pred_occ: np.ndarray, gt_occ: np.ndarray) -> float:
    """|A & B| / |A | B| of two boolean occupancy arrays of one shape (1.0 when both are empty). Threshold logits
    first (``logits > 0``): other dtypes are refused rather than guessed at."""
    pred_occ, gt_occ = np.asarray(pred_occ), np.asarray(gt_occ)
    for name, a in (("pred_occ", pred_occ), ("gt_occ", gt_occ)):
        if a.dtype != np.bool_:
            raise ValueError(f"{name}: expected a boolean occupancy array, got dtype {a.dtype}")
    if pred_occ.shape != gt_occ.shape:
        raise ValueError(f"pred_occ shape {pred_occ.shape} does not match gt_occ shape {gt_occ.shape}")
    union = int(np.count_nonzero(pred_occ | gt_occ))
    return 1.0 if union == 0 else int(np.count_nonzero(pred_occ & gt_occ)) / union


def chamfer_matrix(generated: list[np.ndarray], reference: list[np.ndarray]) -> np.ndarray:
    """D[i, j] = ``chamfer_l1(generated[i], reference[j])``, each point set's KD-tree built once; ``inf`` rows for
    empty generated shapes."""
    gen = [as_points(g, f"generated[{i}]", allow_empty=True) for i, g in enumerate(generated)]
    ref = [as_points(r, f"reference[{j}]") for j, r in enumerate(reference)]
    ref_trees = [cKDTree(r) for r in ref]
    d = np.full((len(gen), len(ref)), np.inf)
    for i, g in enumerate(gen):
        if len(g) == 0:
            continue
        g_tree = cKDTree(g)
        for j, (r, r_tree) in enumerate(zip(ref, ref_trees)):
            d[i, j] = chamfer_from_distances(nearest(r_tree, g), nearest(g_tree, r))
    return d


def mmd_coverage(generated: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Generation scores from the Chamfer-L1 matrix D (generated x reference): MMD = mean over reference shapes of
    the closest generated shape's distance; coverage = fraction of reference shapes that are the nearest reference
    of at least one generated shape (empty generated shapes cover nothing; ties go to the first reference)."""
    if len(generated) == 0 or len(reference) == 0:
        raise ValueError(f"mmd_coverage: generated and reference must be non-empty lists, got {len(generated)} "
                         f"and {len(reference)} shapes")
    d = chamfer_matrix(generated, reference)
    finite = np.isfinite(d).any(axis=1)
    covered = set(np.argmin(d[finite], axis=1).tolist()) if finite.any() else set()
    return {"mmd_chamfer_l1": float(d.min(axis=0).mean()), "coverage": len(covered) / len(reference),
            "num_generated": len(generated), "num_reference": len(reference)}


def bytes_per_code_sequence(tokens: int, codebook_size: int) -> int:
    """VAT's count of the bytes one shape costs: every scale's tokens summed, ``ceil(log2 K)`` bits each, rounded
    up to whole bytes: ``ceil(tokens * ceil(log2 K) / 8)``."""
    if int(tokens) != tokens or tokens < 0:
        raise ValueError(f"tokens: expected a non-negative integer, got {tokens}")
    if int(codebook_size) != codebook_size or codebook_size < 2:
        raise ValueError(f"codebook_size: expected an integer >= 2, got {codebook_size}")
    bits = (int(codebook_size) - 1).bit_length()  # == ceil(log2 K), exact for every integer K >= 2
    return -(-int(tokens) * bits // 8)  # integer ceil: math.ceil(tokens * bits / 8) without float rounding
