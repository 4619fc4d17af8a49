"""A simple geometric classifier of primitive shape type (box, sphere, cylinder, cone, capsule, torus) from a mesh:
the share of generated shapes recognised as the class they were asked for (``evaluate.py shape --generate``).

Rotation-invariant features of surface samples and the mesh: the principal-axis variance ratios, the spread of
the distance to the centroid, how many normals are parallel to a principal axis (flat faces) or perpendicular to
one (a side wall), the largest skewness along a principal axis (a cone's apex), and the Euler number (2 for a
sphere-like surface, 0 for a torus). ``ShapeTypeClassifier.fit_procedural`` standardises them over procedural
shapes and classifies by the nearest class centroid.
"""
from __future__ import annotations

import numpy as np

from vistok.data.shapes3d import PRIMITIVES, ProceduralShapes3D
from vistok.meshes import is_empty, sample_surface


def shape_features(mesh, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Rotation-invariant features (8,) of a non-empty mesh."""
    if is_empty(mesh):
        raise ValueError("shape_features: the mesh is empty (no faces)")
    pts, normals = sample_surface(mesh, n, seed=seed)
    c = pts - pts.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(c.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    proj, along = c @ evecs, np.abs(normals @ evecs)
    d = np.linalg.norm(c, axis=1)
    skew = np.abs((proj ** 3).mean(0) / np.maximum(proj.std(0) ** 3, 1e-9)).max()
    return np.array([evals[1] / evals[0], evals[2] / evals[0], d.std() / d.mean(), (along.max(1) > 0.95).mean(),
                     (along < 0.1).mean(0).max(), skew, float(mesh.euler_number) / 2, (d < 0.5 * d.mean()).mean()])


class ShapeTypeClassifier:
    def __init__(self, centroids: np.ndarray, mean: np.ndarray, std: np.ndarray, classes=PRIMITIVES):
        self.centroids, self.mean, self.std, self.classes = centroids, mean, std, tuple(classes)

    @classmethod
    def fit_procedural(cls, shapes: int = 120, seed: int = 1, resolution: int = 40) -> "ShapeTypeClassifier":
        """Fitted on ``shapes`` procedural single primitives (marching cubes at ``resolution``; training split,
        ``seed`` apart from any model's data)."""
        data = ProceduralShapes3D("train", size=shapes, seed=seed, pool=64, mesh_resolution=16,
                                  reference_resolution=resolution)
        feats, labels = [], []
        for i in range(len(data)):
            feats.append(shape_features(data.mesh(i)))
            labels.append(data.shapes[i][1])
        x, y = np.stack(feats), np.array(labels)
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        return cls(np.stack([z[y == k].mean(0) for k in range(len(PRIMITIVES))]), mean, std)

    def predict(self, meshes: list) -> list[int]:
        """Class ids (-1 for an empty mesh)."""
        out = []
        for m in meshes:
            if is_empty(m):
                out.append(-1)
                continue
            z = (shape_features(m) - self.mean) / self.std
            out.append(int(np.argmin(((self.centroids - z) ** 2).sum(1))))
        return out
