"""Frechet distance between feature statistics, and streaming (rank-mergeable) feature statistics. Pure
functions: the feature extractors and folder drivers are in ``vistok.evaluation.fid``."""
from __future__ import annotations

import numpy as np
import torch



class StreamingStats:
    """Running mean and covariance of feature vectors (float64); optionally keeps the features."""

    def __init__(self, keep_features: bool = False):
        self.n, self.sum, self.outer, self.keep = 0, None, None, keep_features
        self.features: list[np.ndarray] = []

    def update(self, feats: np.ndarray | torch.Tensor) -> None:
        f = feats.detach().double().cpu().numpy() if torch.is_tensor(feats) else np.asarray(feats, np.float64)
        if self.sum is None:
            self.sum, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.keep:
            self.features.append(f)

    def merge(self, other: "StreamingStats") -> None:
        if other.n == 0:
            return
        if self.sum is None:
            self.sum, self.outer = np.zeros_like(other.sum), np.zeros_like(other.outer)
        self.n += other.n
        self.sum += other.sum
        self.outer += other.outer
        self.features += other.features

    def sync(self) -> "StreamingStats":
        """Sum the statistics (and gather the kept features) of every rank's shard."""
        from vistok.dist import all_gather, all_sum, world

        if world()[1] > 1:
            dim = next(len(s) for s in all_gather(None if self.sum is None else self.sum) if s is not None)
            if self.sum is None:
                self.sum, self.outer = np.zeros(dim), np.zeros((dim, dim))
            self.n = int(round(all_sum([float(self.n)])[0]))
            self.sum, self.outer = all_sum(self.sum), all_sum(self.outer)
            if self.keep:
                self.features = [f for part in all_gather(self.features) for f in part]
        return self

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 images for feature statistics, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)  # unbiased, as np.cov
        return mu, sigma

    def save(self, path: str) -> None:
        mu, sigma = self.mu_sigma()
        arrays = {"mu": mu, "sigma": sigma}
        if self.keep and self.features:
            arrays["features"] = np.concatenate(self.features)
        np.savez(path, **arrays)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric({"mu": np.asarray(mu1, np.float64), "sigma": np.asarray(sigma1, np.float64)},
                                          {"mu": np.asarray(mu2, np.float64), "sigma": np.asarray(sigma2, np.float64)},
                                          verbose=False)[KEY_METRIC_FID])
