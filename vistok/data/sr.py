"""Paired LR/HR images for super-resolution: {"lr": 3,h,w, "hr": 3,sh,sw} in [0, 1] (BasicSR's range).

Sources (``root``):
  skimage       the photographs inside scikit-image's wheel (``skimage.data``; grey ones as 3 equal channels):
                train = SKIMAGE_TRAIN, test = SKIMAGE_TEST (held-out photos, never cropped for training).
  a folder      ``root/[split/]`` images are the HR images; or a benchmark folder in BasicSR's layout
                (``Set5/HR/*.png`` with optional ``Set5/LR_bicubic/X2/*x2.png``): the given LR files are used
                when present, else LR is made.
HR is cropped to a multiple of ``scale`` (modcrop); LR = MATLAB-compatible antialiased bicubic downsampling
(``vistok.evaluation.sr.imresize``), float, unclamped, made once per image and kept in memory.

Training items (``split: train``): an aligned random crop of ``patch`` LR pixels (HR ``patch * scale``) with a
random flip / rotation by 90 degrees, ``repeat`` crops per image per epoch; each item's crop is a function of
(seed, index), so resuming a run sees the same data. Test items: the whole image (``eval_crop: 0``, batch 1)
or its centre crop of ``eval_crop`` LR pixels (equal sizes, so batches work in the trainer's evaluation).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.images import IMAGE_EXTENSIONS
from vistok.io import open_rgb
from vistok.registry import register_dataset
from vistok.schema import NonNegInt, PosInt

SKIMAGE_TRAIN = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass",
                 "gravel", "moon", "coins", "clock")
SKIMAGE_TEST = ("chelsea", "rocket", "camera")


def _to_tensor(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image '{name}': shape {arr.shape}; expected H,W or H,W,3")
    return torch.from_numpy(np.array(arr[..., :3], copy=True)).permute(2, 0, 1).float() / 255.0  # writable copy


def load_skimage(name: str) -> torch.Tensor:
    import skimage.data

    return _to_tensor(getattr(skimage.data, name)(), f"skimage.data.{name}")


def read_image(path: str) -> torch.Tensor:
    return _to_tensor(np.asarray(open_rgb(path)), path)


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def _folder_pairs(root: str, split: str, scale: int) -> list[tuple[str, str | None]]:
    base = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    if not os.path.isdir(base):
        raise FileNotFoundError(f"sr_pairs: data.root '{base}' does not exist (expected 'skimage', a folder of "
                                f"images or a benchmark folder with HR/)")
    hr_dir = os.path.join(base, "HR") if os.path.isdir(os.path.join(base, "HR")) else base
    lr_dir = os.path.join(base, "LR_bicubic", f"X{scale}")
    pairs = []
    for f in sorted(os.listdir(hr_dir)):
        if not f.lower().endswith(IMAGE_EXTENSIONS):
            continue
        stem, ext = os.path.splitext(f)
        lr = os.path.join(lr_dir, f"{stem}x{scale}{ext}")
        pairs.append((os.path.join(hr_dir, f), lr if os.path.isfile(lr) else None))
    if not pairs:
        raise ValueError(f"sr_pairs: '{hr_dir}' holds no images (expected files ending in {IMAGE_EXTENSIONS})")
    return pairs


@register_dataset("sr_pairs")
class SRPairs(Dataset):
    def __init__(self, root: str = "skimage", split: str = "train", scale: PosInt = 2, patch: PosInt = 48,
                 repeat: PosInt = 100, eval_crop: NonNegInt = 0, augment: bool = True, seed: NonNegInt = 0, images: list[str] = ()):
        from vistok.ops import imresize

        if scale not in (2, 3, 4):
            raise ValueError(f"sr_pairs: scale {scale}; expected 2, 3 or 4")
        self.split, self.scale, self.patch, self.repeat = split, scale, patch, repeat
        self.eval_crop, self.augment, self.seed = eval_crop, augment and split == "train", seed
        if root == "skimage":
            names = list(images) or list(SKIMAGE_TRAIN if split == "train" else SKIMAGE_TEST)
            self.names = names
            hrs, lrs = [modcrop(load_skimage(n), scale) for n in names], [None] * len(names)
        else:
            pairs = _folder_pairs(root, split, scale)
            self.names = [os.path.basename(h) for h, _ in pairs]
            hrs = [modcrop(read_image(h), scale) for h, _ in pairs]
            lrs = [read_image(lr) if lr else None for _, lr in pairs]
        self.hr, self.lr = [], []
        for name, hr, lr in zip(self.names, hrs, lrs):
            lr = imresize(hr, 1 / scale) if lr is None else lr
            if lr.shape[-2] * scale != hr.shape[-2] or lr.shape[-1] * scale != hr.shape[-1]:
                raise ValueError(f"sr_pairs: '{name}': LR {tuple(lr.shape[-2:])} x{scale} != HR {tuple(hr.shape[-2:])}")
            if split == "train" and min(lr.shape[-2:]) < patch:
                raise ValueError(f"sr_pairs: '{name}': LR {tuple(lr.shape[-2:])} is smaller than data.patch {patch}")
            self.hr.append(hr)
            self.lr.append(lr)

    def __len__(self) -> int:
        return len(self.hr) * (self.repeat if self.split == "train" else 1)

    def __getitem__(self, i: int) -> dict:
        k, s = i % len(self.hr), self.scale
        lr, hr = self.lr[k], self.hr[k]
        if self.split != "train":
            if self.eval_crop:
                c = min(self.eval_crop, *lr.shape[-2:])
                top, left = (lr.shape[-2] - c) // 2, (lr.shape[-1] - c) // 2
                lr, hr = lr[:, top:top + c, left:left + c], hr[:, top * s:(top + c) * s, left * s:(left + c) * s]
            return {"lr": lr, "hr": hr, "name": self.names[k]}
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        p = self.patch
        top = int(torch.randint(0, lr.shape[-2] - p + 1, (), generator=g))
        left = int(torch.randint(0, lr.shape[-1] - p + 1, (), generator=g))
        lr, hr = lr[:, top:top + p, left:left + p], hr[:, top * s:(top + p) * s, left * s:(left + p) * s]
        if self.augment:
            flip, rot = torch.randint(0, 2, (), generator=g), int(torch.randint(0, 4, (), generator=g))
            if flip:
                lr, hr = lr.flip(-1), hr.flip(-1)
            lr, hr = lr.rot90(rot, (-2, -1)), hr.rot90(rot, (-2, -1))
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "name": self.names[k]}

    def __repr__(self) -> str:
        return f"SRPairs({self.split}, x{self.scale}, images={self.names})"
