"""Real images from a local folder.

Layouts:
  ImageNet style  ``root/[split/]<class>/<image>`` -> labels from sorted class folder names;
  flat            ``root/[split/]<image>`` -> label -1, optional captions file (JSON lines
                  ``{"file": "name.jpg", "caption": "..."}``) whose ``file`` is relative to the folder.
If ``root/<split>`` exists it is used, else ``root`` serves every split.
Images are resized (shorter side) and centre-cropped to ``image_size``; train may flip horizontally.
A corrupt or unreadable image raises an error that names its path.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vistok.io import open_rgb, read_jsonl
from vistok.registry import register_dataset
from vistok.schema import PosInt

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_image(path, image_size: int, name: str | None = None) -> torch.Tensor:
    """Read an RGB image (a path or a binary file object; ``name`` for errors), resize the shorter side,
    centre-crop; float tensor 3,H,W in [-1, 1]."""
    im = open_rgb(path, name)  # every PIL mode converted correctly (16-bit grey, palette, alpha), or refused by path
    w, h = im.size
    scale = image_size / min(w, h)
    im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@register_dataset("image_folder")
class ImageFolder(Dataset):
    def __init__(self, root: str, split: str = "train", image_size: PosInt = 256, captions: str = "", flip: bool = True):
        base = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
        if not os.path.isdir(base):
            raise FileNotFoundError(f"image folder '{base}' does not exist (data.root; expected a folder of images or class subfolders)")
        self.base, self.image_size, self.split = base, image_size, split
        self.flip = flip and split == "train"
        entries = sorted(os.listdir(base))
        classes = [d for d in entries if os.path.isdir(os.path.join(base, d))]
        self.classes = classes
        self.files: list[str] = []
        self.labels: list[int] = []
        if classes:
            for ci, c in enumerate(classes):
                for f in sorted(os.listdir(os.path.join(base, c))):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.files.append(os.path.join(base, c, f))
                        self.labels.append(ci)
        else:
            self.files = [os.path.join(base, f) for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
            self.labels = [-1] * len(self.files)
        if not self.files:
            raise ValueError(f"image folder '{base}' holds no images (expected files ending in {IMAGE_EXTENSIONS})")
        self.captions: dict[str, str] | None = None
        if captions:
            self.captions = _read_captions(captions)
            missing = [f for f in self.files if os.path.relpath(f, base) not in self.captions]
            if missing:
                raise ValueError(f"captions file '{captions}' has no caption for '{os.path.relpath(missing[0], base)}' ({len(missing)} missing)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        img = load_image(self.files[i], self.image_size)
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        item = {"image": img, "label": self.labels[i]}
        if self.captions is not None:
            item["caption"] = self.captions[os.path.relpath(self.files[i], self.base)]
        return item

    def __repr__(self) -> str:
        return f"ImageFolder({self.base!r}, n={len(self)})"


def _read_captions(path: str) -> dict[str, str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file '{path}' does not exist (data.captions)")
    out = {}
    for n, rec in read_jsonl(path):
        try:
            out[rec["file"]] = str(rec["caption"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected a JSON object with 'file' and 'caption' ({e})") from e
    return out
