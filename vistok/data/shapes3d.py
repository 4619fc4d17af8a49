"""3-D shapes for VAT: procedural primitives with exact occupancy, and watertight meshes from a folder.

Procedural (``shapes3d``): a box, sphere, cylinder, cone, capsule or torus with random proportions, size and
rotation, or (``union_fraction``) the union of two of them, analytic as the minimum of their signed distances.
Shape i of a split is always the same shape (seeded by split and index). A single primitive is labelled by its
type (0..len(kinds)-1), a union by its unordered pair of types (after the singles, ``class_names`` lists
them). The surface is the marching-cubes mesh of the signed distance (``mesh_resolution``^3); surface points
and their face normals come from trimesh's ``sample_surface``; occupancy at query points is exact (the sign of
the distance). Every item holds

    points     P,6 float32: surface xyz in [-1, 1] and the unit normal (``num_points`` of a pool of ``pool``)
    queries    Q,3: ``num_uniform`` uniform points in [-1, 1]^3, then ``num_near`` surface points + N(0, near_sigma)
    occupancy  Q float32: 1 inside
    label      the class id

Training items draw fresh points and queries at every access; held-out items are fixed (seeded by index).
``mesh(i)`` is the reference surface (marching cubes at ``reference_resolution``), ``occupancy_at(i, xyz)``
the exact occupancy anywhere.

Folder (``mesh_folder``): .obj/.ply/.off/.stl under ``root`` in a ModelNet layout (``class/train|test/*.off``),
a ShapeNet one (``synset/model/models/*.obj``: one class per synset, 1 in 10 models held out by name hash) or
flat (one class). Each mesh is normalised to [-1, 1]^3 (largest half-extent 0.95), ``fill_holes`` is tried and
a mesh that stays open is refused by path; occupancy of a fixed query pool comes from trimesh's ``contains``
(rtree) once and is cached (``cache_dir``, keyed by the file's content and the pool settings).
"""
from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from vistok.meshes import grid_to_mesh, load_mesh, normalize_mesh, sample_surface
from vistok.registry import register_dataset
from vistok.schema import NonNegInt, PosFloat, PosInt, Prob

PRIMITIVES = ("box", "sphere", "cylinder", "cone", "capsule", "torus")
_SPLIT_SEED = {"train": 0, "test": 7_919_317}
MESH_EXTENSIONS = (".obj", ".ply", ".off", ".stl")


# ---- signed distances (negative inside), in the primitive's own frame, axis z -----------------------------
def _box(p, a):
    q = np.abs(p) - a
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def _cylinder(p, r, h):
    d = np.stack([np.linalg.norm(p[:, :2], axis=-1) - r, np.abs(p[:, 2]) - h], -1)
    return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)


def _cone(p, r, h):
    """Capped cone, base radius r at z = -h, apex at z = +h (Quilez's exact capped-cone distance, r2 = 0)."""
    qx, qy = np.linalg.norm(p[:, :2], axis=-1), p[:, 2]
    k2x, k2y = -r, 2 * h
    ca_x = qx - np.minimum(qx, np.where(qy < 0, r, 0.0))
    ca_y = np.abs(qy) - h
    t = np.clip(((0 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y), 0, 1)
    cb_x, cb_y = qx + k2x * t, qy - h + k2y * t
    s = np.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return s * np.sqrt(np.minimum(ca_x ** 2 + ca_y ** 2, cb_x ** 2 + cb_y ** 2))


def _capsule(p, r, h):
    axis = np.zeros_like(p)
    axis[:, 2] = np.clip(p[:, 2], -h, h)
    return np.linalg.norm(p - axis, axis=-1) - r


def _torus(p, big, small):
    q = np.stack([np.linalg.norm(p[:, :2], axis=-1) - big, p[:, 2]], -1)
    return np.linalg.norm(q, axis=-1) - small


def _sdf_local(kind: str, p: np.ndarray, q: tuple) -> np.ndarray:
    if kind == "box":
        return _box(p, np.asarray(q))
    if kind == "sphere":
        return np.linalg.norm(p, axis=-1) - q[0]
    return {"cylinder": _cylinder, "cone": _cone, "capsule": _capsule, "torus": _torus}[kind](p, *q)


def _draw_params(kind: str, rng) -> tuple[tuple, float]:
    """Random proportions of a primitive -> (parameters, bounding radius)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if kind == "box":
        a = (u(0.3, 1.0), u(0.3, 1.0), u(0.3, 1.0))
        return a, float(np.linalg.norm(a))
    if kind == "sphere":
        return (1.0,), 1.0
    if kind in ("cylinder", "cone"):
        r, h = u(0.4, 1.0), u(0.4, 1.0)
        return (r, h), float(np.hypot(r, h))
    if kind == "capsule":
        r, h = u(0.25, 0.5), u(0.3, 0.6)
        return (r, h), r + h
    if kind == "torus":
        big = 1.0
        small = u(0.2, 0.45)
        return (big, small), big + small
    raise ValueError(f"shapes3d: unknown primitive '{kind}'; expected one of {PRIMITIVES}")


def random_primitive(kind: str, rng, radius: float, centre=(0.0, 0.0, 0.0)) -> dict:
    """A primitive of ``kind`` scaled to bounding radius ``radius``, randomly rotated, at ``centre``."""
    params, bound = _draw_params(kind, rng)
    s = radius / bound
    return {"kind": kind, "params": tuple(v * s for v in params), "rotation": Rotation.random(random_state=rng).as_matrix(),
            "centre": np.asarray(centre, dtype=np.float64)}


def shape_sdf(parts: list[dict], xyz: np.ndarray) -> np.ndarray:
    """Signed distance N of a union of primitives at world points N,3 (the minimum over the parts)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    return np.min([_sdf_local(p["kind"], (xyz - p["centre"]) @ p["rotation"], p["params"]) for p in parts], 0)


def _grid(resolution: int) -> np.ndarray:
    axis = np.linspace(-1, 1, resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def sdf_mesh(parts: list[dict], resolution: int):
    """The zero level set of a shape's signed distance as a trimesh mesh (marching cubes over [-1, 1]^3)."""
    values = -shape_sdf(parts, _grid(resolution)).reshape((resolution,) * 3)
    return grid_to_mesh(values.astype(np.float32), 0.0)


def _near_queries(surface: np.ndarray, n: int, sigma: float, rng) -> np.ndarray:
    idx = rng.integers(0, len(surface), n)
    return np.clip(surface[idx, :3] + rng.normal(0, sigma, (n, 3)), -1, 1)


def _uniform_queries(n: int, rng) -> np.ndarray:
    return rng.uniform(-1, 1, (n, 3))


class _PointsAndQueries(Dataset):
    """What both 3-D datasets share: items from a surface pool per shape and an occupancy oracle."""

    num_points: int
    num_uniform: int
    num_near: int
    near_sigma: float
    split: str

    def _rng(self, i: int):
        if self.split == "train":
            return np.random.default_rng()  # fresh points and queries at every access
        return np.random.default_rng([_SPLIT_SEED["test"], 1, i])

    def _item(self, i: int, pool: np.ndarray, label: int) -> dict:
        rng = self._rng(i)
        pick = rng.choice(len(pool), self.num_points, replace=len(pool) < self.num_points)
        queries = np.concatenate([_uniform_queries(self.num_uniform, rng),
                                  _near_queries(pool, self.num_near, self.near_sigma, rng)]).astype(np.float32)
        return {"points": torch.from_numpy(pool[pick].astype(np.float32)), "queries": torch.from_numpy(queries),
                "occupancy": torch.from_numpy(self.occupancy_at(i, queries).astype(np.float32)), "label": label}


@register_dataset("shapes3d")
class ProceduralShapes3D(_PointsAndQueries):
    def __init__(self, split: str = "train", size: PosInt = 2000, kinds: list[str] = PRIMITIVES,
                 union_fraction: Prob = 0.0, num_points: PosInt = 512, pool: PosInt = 4096, num_uniform: PosInt = 1024,
                 num_near: NonNegInt = 1024, near_sigma: PosFloat = 0.03, mesh_resolution: PosInt = 48,
                 reference_resolution: PosInt = 96, seed: NonNegInt = 0):
        if split not in _SPLIT_SEED:
            raise ValueError(f"shapes3d: split '{split}'; expected one of {sorted(_SPLIT_SEED)}")
        bad = [k for k in kinds if k not in PRIMITIVES]
        if bad or not kinds:
            raise ValueError(f"shapes3d: kinds {list(kinds)}; expected a non-empty subset of {PRIMITIVES}")
        self.kinds = tuple(kinds)
        self.pairs = list(itertools.combinations_with_replacement(range(len(self.kinds)), 2)) if union_fraction > 0 else []
        self.split, self.size, self.union_fraction = split, size, union_fraction
        self.num_points, self.num_uniform, self.num_near, self.near_sigma = num_points, num_uniform, num_near, near_sigma
        self.reference_resolution, self.seed = reference_resolution, seed
        self.shapes = [self._draw(i) for i in range(size)]
        self.pools = []
        for i, (parts, _) in enumerate(self.shapes):
            mesh = sdf_mesh(parts, mesh_resolution)
            pts, normals = sample_surface(mesh, pool, seed=i)
            self.pools.append(np.concatenate([pts, normals], 1).astype(np.float32))

    @property
    def class_names(self) -> list[str]:
        return list(self.kinds) + [f"{self.kinds[a]}+{self.kinds[b]}" for a, b in self.pairs]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _draw(self, i: int) -> tuple[list[dict], int]:
        rng = np.random.default_rng([_SPLIT_SEED[self.split], self.seed, i])
        if self.pairs and rng.uniform() < self.union_fraction:
            pair = int(rng.integers(len(self.pairs)))
            direction = Rotation.random(random_state=rng).apply([1.0, 0.0, 0.0])
            offset = float(rng.uniform(0.25, 0.4))
            parts = [random_primitive(self.kinds[k], rng, float(rng.uniform(0.4, 0.55)), sign * offset * direction)
                     for k, sign in zip(self.pairs[pair], (1, -1))]
            return parts, len(self.kinds) + pair
        k = int(rng.integers(len(self.kinds)))
        return [random_primitive(self.kinds[k], rng, float(rng.uniform(0.65, 0.9)))], k

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return self._item(i, self.pools[i], self.shapes[i][1])

    def occupancy_at(self, i: int, xyz: np.ndarray) -> np.ndarray:
        return shape_sdf(self.shapes[i][0], xyz) < 0

    def mesh(self, i: int):
        return sdf_mesh(self.shapes[i][0], self.reference_resolution)

    def __repr__(self) -> str:
        return f"ProceduralShapes3D(split={self.split!r}, size={self.size}, classes={self.num_classes})"


def _folder_items(root: str, split: str) -> list[tuple[str, str]]:
    """(path, class name) of the split's meshes in a ModelNet, ShapeNet or flat layout."""
    found = []
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.lower().endswith(MESH_EXTENSIONS):
                found.append(os.path.join(dirpath, f))
    if not found:
        raise ValueError(f"mesh_folder: no meshes ({'/'.join(MESH_EXTENSIONS)}) under {root}")
    out = []
    for path in sorted(found):
        rel = os.path.relpath(path, root).split(os.sep)
        if len(rel) >= 3 and rel[1] in ("train", "test"):  # ModelNet: class/split/file
            if rel[1] == split:
                out.append((path, rel[0]))
            continue
        held_out = int(hashlib.sha256(rel[-3 if len(rel) >= 4 else -1].encode()).hexdigest(), 16) % 10 == 0
        if held_out == (split == "test"):
            out.append((path, rel[0] if len(rel) > 1 else "mesh"))
    return out


@register_dataset("mesh_folder")
class MeshFolder3D(_PointsAndQueries):
    def __init__(self, root: str, split: str = "train", num_points: PosInt = 2048, pool: PosInt = 16384,
                 num_uniform: PosInt = 1024, num_near: NonNegInt = 1024, near_sigma: PosFloat = 0.03,
                 label_pool: PosInt = 50000, cache_dir: str = "", limit: NonNegInt = 0):
        if not os.path.isdir(root):
            raise ValueError(f"mesh_folder: root {root} is not a folder")
        self.split, self.root = split, root
        self.num_points, self.num_uniform, self.num_near, self.near_sigma = num_points, num_uniform, num_near, near_sigma
        items = _folder_items(root, split)[: limit or None]
        self.class_names = sorted({c for _, c in _folder_items(root, "train") + _folder_items(root, "test")})
        self.num_classes = len(self.class_names)
        self.paths = [p for p, _ in items]
        self.labels = [self.class_names.index(c) for _, c in items]
        cache = cache_dir or os.path.join(os.environ.get("VISTOK_CACHE") or os.path.expanduser("~/.cache/vistok"), "meshes")
        self.cached = [self._labelled(p, pool, label_pool, near_sigma, cache) for p in self.paths]

    @staticmethod
    def _labelled(path: str, pool: int, label_pool: int, sigma: float, cache: str) -> dict:
        """Surface pool, query pool and their occupancy for one mesh, from the cache or computed once."""
        with open(path, "rb") as f:
            key = hashlib.sha256(f.read() + f"{pool},{label_pool},{sigma},v1".encode()).hexdigest()[:24]
        file = os.path.join(cache, key + ".npz")
        if os.path.isfile(file):
            with np.load(file) as z:
                return {k: z[k] for k in z.files}
        mesh = normalize_mesh(load_mesh(path))
        pts, normals = sample_surface(mesh, pool, seed=0)
        rng = np.random.default_rng(0)
        queries = np.concatenate([_uniform_queries(label_pool // 2, rng), _near_queries(pts, label_pool - label_pool // 2, sigma, rng)])
        out = {"surface": np.concatenate([pts, normals], 1).astype(np.float32), "queries": queries.astype(np.float32),
               "inside": mesh.contains(queries)}
        os.makedirs(cache, exist_ok=True)
        tmp = file + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **out)
        os.replace(tmp, file)
        return out

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        c, rng = self.cached[i], self._rng(i)
        n_uni = len(c["queries"]) // 2
        pick = np.concatenate([rng.integers(0, n_uni, self.num_uniform),
                               n_uni + rng.integers(0, len(c["queries"]) - n_uni, self.num_near)])
        pts = rng.choice(len(c["surface"]), self.num_points, replace=len(c["surface"]) < self.num_points)
        return {"points": torch.from_numpy(c["surface"][pts]), "queries": torch.from_numpy(c["queries"][pick]),
                "occupancy": torch.from_numpy(c["inside"][pick].astype(np.float32)), "label": self.labels[i]}

    def occupancy_at(self, i: int, xyz: np.ndarray) -> np.ndarray:
        return normalize_mesh(load_mesh(self.paths[i])).contains(np.asarray(xyz, dtype=np.float64))

    def mesh(self, i: int):
        return normalize_mesh(load_mesh(self.paths[i]))

    def __repr__(self) -> str:
        return f"MeshFolder3D({self.root!r}, split={self.split!r}, n={len(self)})"
