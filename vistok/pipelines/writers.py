"""Output writers, registered by name: what ``sample.py`` leaves in its ``--out`` folder.

- ``png``: ``<index:05d>.png`` per image (+ ``grid.png``, written by the pipeline); ``sampling.json`` is sample.py's.
- ``npz``: ``samples.npz`` with ``arr_0`` uint8 N,H,W,3 (the ADM FID suite's layout), from the PNGs.
- ``geneval``: the official GenEval layout, ``<index:05d>/metadata.jsonl`` + ``samples/<n:04d>.png``.
- ``captions``: ``captions.jsonl``, one ``{"index", "caption", ...}`` per line (image-to-text pipelines).

A writer takes items with ``write(index, item)`` and closes with ``finish()`` (main process only); an item is
whatever the pipeline produces (an image batch, a prompt's images, a caption), so writers for meshes or
point clouds plug in the same way.
"""
from __future__ import annotations

import json
import os

import numpy as np

from vistok.io import atomic_write_text
from vistok.registry import register_writer, lookup
from vistok.image_files import read_images, save_images, to_uint8


class Writer:
    def __init__(self, out: str):
        self.out = out

    def write(self, index: int, item) -> None:
        pass

    def finish(self, count: int) -> None:
        pass


@register_writer("png")
class PngWriter(Writer):
    def write(self, index: int, images) -> None:
        save_images(images, self.out, start=index, grid_max=0)


@register_writer("npz")
class NpzWriter(Writer):
    def finish(self, count: int) -> None:
        arr = to_uint8(read_images(self.out, count))
        np.savez(os.path.join(self.out, "samples.npz"), arr_0=arr if arr.shape[-1] == 3 else np.repeat(arr, 3, -1))


@register_writer("geneval")
class GenEvalWriter(Writer):
    def write(self, index: int, item) -> None:
        from vistok.image_files import write_prompt_folder

        metadata, images = item
        write_prompt_folder(self.out, index, metadata, to_uint8(images).squeeze(-1) if images.shape[1] == 1 else to_uint8(images))


@register_writer("captions")
class CaptionWriter(Writer):
    def __init__(self, out: str):
        super().__init__(out)
        self.rows = []

    def write(self, index: int, item) -> None:
        caption, extra = item if isinstance(item, tuple) else (item, {})
        self.rows.append({"index": index, "caption": caption, **extra})

    def finish(self, count: int) -> None:
        rows = sorted(self.rows, key=lambda r: r["index"])
        atomic_write_text(os.path.join(self.out, "captions.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))


def build_writers(names, out: str) -> list[Writer]:
    return [lookup("writer", n)(out) for n in names]

