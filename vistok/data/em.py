"""Electron-microscopy volumes with neuron segmentations: procedural, or real CREMI-style stacks from a path.

Items: {"volume": 1,D,H,W float in [0, 1], "labels": D,H,W int64 (0 = unlabelled, ignored by the metrics),
"affinities": 3,D,H,W float (z, y, x: 1 where a voxel and its predecessor along that axis carry the same
non-zero label)}.

Procedural (``root: procedural``): anisotropic 3-D Voronoi cells (serial-section EM: a z step is ``anisotropy``
times an xy pixel), a dark membrane wherever a voxel's label differs from a neighbour's, textured cell
interiors of varying brightness, Gaussian blur and noise. Each split draws its own volumes from its own seed
(test volumes are never seen in training). Real (``root``: a .h5/.hdf5 file with ``raw_key`` and
``labels_key`` datasets, e.g. CREMI's volumes/raw and volumes/labels/neuron_ids, or ``raw``/``labels`` paths
to .tif stacks or .npy arrays): the last ``test_fraction`` of the z slices is the test split.
Training items are random crops of ``crop`` (D, H, W) with random flips / in-plane transposes (a function of
(seed, index): exact resume); test items are the whole held-out volumes (procedural) or crops tiling them.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.registry import register_dataset
from vistok.schema import NonNegInt, OpenUnit, PosFloat, PosInt, PosInts, Triple


def voronoi_em(shape=(16, 96, 96), cells: int = 40, anisotropy: float = 4.0, blur: float = 1.0, noise: float = 0.06,
               membrane: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One procedural EM volume: (raw float32 in [0, 1], labels int64 >= 1)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    d, h, w = shape
    pts = rng.random((cells, 3)) * np.array([d * anisotropy, h, w])
    zz, yy, xx = np.meshgrid(np.arange(d) * anisotropy, np.arange(h), np.arange(w), indexing="ij")
    grid = np.stack([zz, yy, xx], -1).reshape(-1, 3)
    best = np.full(len(grid), np.inf)
    labels = np.zeros(len(grid), np.int64)
    for i, p in enumerate(pts):  # nearest seed, one seed at a time (memory: one volume of distances)
        dist = ((grid - p) ** 2).sum(1)
        closer = dist < best
        best[closer], labels[closer] = dist[closer], i + 1
    labels = labels.reshape(shape)
    edge = np.zeros(shape, bool)
    for axis in (1, 2):  # membranes are drawn in-plane (sections are imaged in xy)
        diff = np.diff(labels, axis=axis) != 0
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[axis], sl_b[axis] = slice(1, None), slice(None, -1)
        edge[tuple(sl_a)] |= diff
        edge[tuple(sl_b)] |= diff
    if membrane > 1:
        edge = ndimage.binary_dilation(edge, structure=np.ones((1, membrane, membrane), bool))
    brightness = rng.uniform(0.55, 0.85, cells + 1)
    raw = brightness[labels] + ndimage.gaussian_filter(rng.normal(0, 0.08, shape), (0.5, 1.5, 1.5))
    raw[edge] = rng.uniform(0.08, 0.2)
    raw = ndimage.gaussian_filter(raw, (blur / anisotropy, blur, blur)) + rng.normal(0, noise, shape)
    return np.clip(raw, 0, 1).astype(np.float32), labels


def affinities(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """D,H,W labels -> 3,D,H,W nearest-neighbour affinities (z, y, x); 0 on the first plane of each axis and
    wherever either voxel is unlabelled (0)."""
    lab = torch.as_tensor(labels)
    out = torch.zeros((3, *lab.shape), dtype=torch.float32)
    for c in range(3):
        a, b = lab.narrow(c, 1, lab.shape[c] - 1), lab.narrow(c, 0, lab.shape[c] - 1)
        out[c].narrow(c, 1, lab.shape[c] - 1).copy_(((a == b) & (a > 0)).float())
    return out


def read_volume(path: str, key: str = "") -> np.ndarray:
    """A 3-D array from .h5/.hdf5 (dataset ``key``), a multi-page .tif/.tiff, or .npy (no pickles)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"em: volume file '{path}' does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".h5", ".hdf5", ".hdf"):
        try:
            import h5py
        except ImportError as e:
            raise ImportError(f"em: reading '{path}' needs h5py (pip install h5py)") from e
        with h5py.File(path, "r") as f:
            if key not in f:
                raise KeyError(f"em: '{path}' has no dataset '{key}' (data.raw_key / data.labels_key)")
            return np.asarray(f[key])
    if ext in (".tif", ".tiff"):
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(p) for p in ImageSequence.Iterator(im)])
    if ext == ".npy":
        return np.load(path, allow_pickle=False)
    raise ValueError(f"em: '{path}': expected .h5/.hdf5, .tif/.tiff or .npy")


@register_dataset("em")
class EMVolumes(Dataset):
    def __init__(self, root: str = "procedural", split: str = "train", crop: Triple(PosInt) = (8, 32, 32),
                 volumes: PosInt = 4, volume_shape: Triple(PosInt) = (16, 64, 64), cells: PosInt = 24, anisotropy: PosFloat = 4.0,
                 repeat: PosInt = 50, seed: NonNegInt = 0, raw: str = "", labels: str = "", raw_key: str = "volumes/raw",
                 labels_key: str = "volumes/labels/neuron_ids", test_fraction: OpenUnit = 0.25, test_volume_shape: PosInts = ()):
        self.split, self.crop, self.repeat, self.seed = split, tuple(int(c) for c in crop), repeat, seed
        if root == "procedural":
            base = 1000 if split == "train" else 2000  # disjoint seeds per split
            n = volumes if split == "train" else max(1, volumes // 2)
            shape = tuple(test_volume_shape) if (split != "train" and test_volume_shape) else tuple(volume_shape)
            vols = [voronoi_em(shape, cells, anisotropy, seed=base + seed * 100 + i) for i in range(n)]
        else:
            raw_arr = read_volume(raw or root, raw_key).astype(np.float32)
            lab_arr = read_volume(labels or root, labels_key).astype(np.int64)
            if raw_arr.shape != lab_arr.shape or raw_arr.ndim != 3:
                raise ValueError(f"em: raw {raw_arr.shape} and labels {lab_arr.shape} must be equal 3-D shapes")
            if raw_arr.max() > 1:
                raw_arr = raw_arr / 255.0
            cut = int(round(raw_arr.shape[0] * (1 - test_fraction)))
            part = slice(0, cut) if split == "train" else slice(cut, None)
            vols = [(raw_arr[part], lab_arr[part])]
        self.vols = [(torch.from_numpy(r), torch.from_numpy(lab)) for r, lab in vols]
        small = [tuple(r.shape) for r, _ in self.vols if any(s < c for s, c in zip(r.shape, self.crop))]
        if small and split == "train":
            raise ValueError(f"em: volumes {small} are smaller than data.crop {list(self.crop)}")

    def __len__(self) -> int:
        return len(self.vols) * (self.repeat if self.split == "train" else 1)

    def __getitem__(self, i: int) -> dict:
        raw, lab = self.vols[i % len(self.vols)]
        if self.split == "train":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            corner = [int(torch.randint(0, s - c + 1, (), generator=g)) for s, c in zip(raw.shape, self.crop)]
            sl = tuple(slice(o, o + c) for o, c in zip(corner, self.crop))
            raw, lab = raw[sl], lab[sl]
            for axis in (1, 2):
                if torch.randint(0, 2, (), generator=g):
                    raw, lab = raw.flip(axis), lab.flip(axis)
            if raw.shape[1] == raw.shape[2] and torch.randint(0, 2, (), generator=g):
                raw, lab = raw.transpose(1, 2), lab.transpose(1, 2)
            raw, lab = raw.contiguous(), lab.contiguous()
        return {"volume": raw[None].float(), "labels": lab, "affinities": affinities(lab)}

    def __repr__(self) -> str:
        return f"EMVolumes({self.split}, volumes={[tuple(r.shape) for r, _ in self.vols]}, crop={self.crop})"
