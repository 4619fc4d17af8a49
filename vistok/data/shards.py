"""Tar shards in the webdataset layout, read by random access so resume and sharding stay exact.

    <root>/<split>-000000.tar, <split>-000001.tar, ...   each holding, per sample,
    <key>.jpg|.png|.webp (the image), optionally <key>.cls (class id as text) and <key>.txt (caption)

This is what ``webdataset``'s ``TarWriter`` and ``scripts/make_shards.py`` write, so shards made by either
work. Instead of streaming the tars in order, the dataset indexes every member's byte offset once
(``<shard>.index.json`` next to it when the folder is writable, else in memory) and reads a sample by
seeking: the trainer's seeded per-epoch permutation, its mid-epoch resume and accelerate's per-rank batch
sharding then apply exactly as to any other dataset, and each rank only reads the bytes of its samples.
Use local disks (or a mounted filesystem); plain, uncompressed tar.
"""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import torch
from torch.utils.data import Dataset

from vistok.data.images import load_image
from vistok.registry import register_dataset
from vistok.schema import PosInt

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def index_shard(path: str) -> dict:
    """{key: {ext: [offset, size]}} for one tar file, cached in <path>.index.json."""
    cache = path + ".index.json"
    if os.path.isfile(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
        with open(cache, encoding="utf-8") as f:
            return json.load(f)
    samples: dict = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile() or "." not in os.path.basename(m.name):
                    continue
                base = os.path.basename(m.name)  # webdataset: the key is the path up to the first dot of the name
                key, ext = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]), base.split(".", 1)[1]
                samples.setdefault(key, {})[ext.lower()] = [m.offset_data, m.size]
    except tarfile.TarError as e:
        raise ValueError(f"shard '{path}' is not a readable (uncompressed) tar file: {e}") from e
    try:
        tmp = cache + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(samples, f)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only folder: keep the index in memory
    return samples


@register_dataset("shards")
class ShardDataset(Dataset):
    def __init__(self, root: str, split: str = "train", image_size: PosInt = 256, flip: bool = True):
        self.files = sorted(glob.glob(os.path.join(root, f"{split}-*.tar")))
        if not self.files:
            raise FileNotFoundError(f"no shards '{os.path.join(root, split + '-*.tar')}' (data.root; expected "
                                    f"webdataset-layout tar files, e.g. from scripts/make_shards.py)")
        self.image_size, self.flip = image_size, flip and split == "train"
        self.items: list[tuple[int, str, dict]] = []
        for si, path in enumerate(self.files):
            for key, members in sorted(index_shard(path).items()):
                image = next((e for e in IMAGE_EXTS if e in members), None)
                if image is None:
                    raise ValueError(f"shard '{path}': sample '{key}' has no image member ({'/'.join(IMAGE_EXTS)}); "
                                     f"it has {sorted(members)}")
                self.items.append((si, key, {**members, "image": members[image]}))
        if not self.items:
            raise ValueError(f"shards under '{root}' for split '{split}' hold no samples")
        self._handles: dict = {}

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, shard: int, span) -> bytes:
        f = self._handles.get(shard)
        if f is None:  # one handle per shard and per process (DataLoader workers each open their own)
            f = self._handles[shard] = open(self.files[shard], "rb")
        f.seek(span[0])
        return f.read(span[1])

    def __getitem__(self, i: int) -> dict:
        shard, key, members = self.items[i]
        name = f"{self.files[shard]}:{key}"
        img = load_image(io.BytesIO(self._read(shard, members["image"])), self.image_size, name=name)
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        item = {"image": img, "label": int(self._read(shard, members["cls"]).decode()) if "cls" in members else -1}
        if "txt" in members:
            item["caption"] = self._read(shard, members["txt"]).decode("utf-8")
        return item

    def __getstate__(self):  # file handles do not travel to DataLoader workers
        return {**self.__dict__, "_handles": {}}

    def __repr__(self) -> str:
        return f"ShardDataset({len(self.files)} shards, n={len(self)})"
