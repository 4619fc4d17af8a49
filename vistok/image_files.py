"""Writing sampled / reconstructed images: one PNG per image plus a grid; and the guard that keeps a
samples folder from mixing stale images into a score or losing files sample.py did not write."""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import torch
from PIL import Image

from vistok.io import OutputError, atomic_write_json, read_json, read_jsonl
from vistok.ops import to_unit


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B,C,H,W in [-1, 1] -> B,H,W,C uint8."""
    return (to_unit(images.float()) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def class_grid(images: torch.Tensor, labels: list[int], per_class: int = 8, max_classes: int = 16) -> torch.Tensor:
    """Up to ``per_class`` images of each class, one row per class, classes in increasing order."""
    rows = []
    for c in sorted(set(labels))[:max_classes]:
        idx = [i for i, lab in enumerate(labels) if lab == c][:per_class]
        rows.append(images[idx])
    return torch.cat(rows)


def save_images(images: torch.Tensor, out: str, start: int = 0, grid_pairs: torch.Tensor | None = None,
                grid_max: int = 64, grid: torch.Tensor | None = None, grid_ncol: int = 8) -> list[str]:
    """Write ``out/<index>.png`` and ``out/grid.png`` (with ``grid_pairs``: rows of inputs above outputs;
    with ``grid``: exactly those images)."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        path = os.path.join(out, f"{start + i:05d}.png")
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
        paths.append(path)
    if grid is not None:
        save_grid(grid, os.path.join(out, "grid.png"), nrow=grid_ncol)
        return paths
    if grid_max == 0:
        return paths
    g = images[:grid_max]
    ncol = min(8, len(g))
    if grid_pairs is not None:
        x = grid_pairs[:grid_max]
        rows = [t for i in range(0, len(g), ncol) for t in (x[i:i + ncol], g[i:i + ncol])]
        g = torch.cat(rows)
    save_grid(g, os.path.join(out, "grid.png"), nrow=ncol)
    return paths


def read_images(out: str, n: int) -> torch.Tensor:
    """out/00000.png .. out/<n-1>.png -> B,C,H,W in [-1, 1] (grey stays one channel)."""
    arrs = [np.asarray(Image.open(os.path.join(out, f"{i:05d}.png"))) for i in range(n)]
    x = torch.from_numpy(np.stack(arrs)).float() / 127.5 - 1
    return x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)


def write_json(path: str, obj) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=str)))


_OWN_FILE = re.compile(r"^(\d{5}\.png|grid\.png|sampling\.json|samples\.npz|captions\.jsonl|\.tmp-.*)$")
_PROMPT_DIR = re.compile(r"^\d{5}$")


def _is_own_prompt_dir(path: str) -> bool:
    """A GenEval prompt folder as write_prompt_folder leaves it: metadata.jsonl + samples/<nnnn>.png."""
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        ok = {"metadata.jsonl"} if rel == "." else set()
        if rel not in (".", "samples") or any(not (f in ok or (rel == "samples" and re.match(r"^\d{4}\.png$", f)))
                                              for f in files):
            return False
        if rel == "samples" and dirs:
            return False
    return True


def _foreign_entries(out: str, listed: set[str]) -> list[str]:
    """Entries of a samples folder that an earlier sample.py did not write."""
    foreign = []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if os.path.islink(path):  # never followed: what it points to is not ours
            foreign.append(name)
            continue
        if os.path.isfile(path) and (_OWN_FILE.match(name) or name in listed):
            continue
        if os.path.isdir(path) and name == "sr" and not _foreign_entries(path, set()):
            continue
        if os.path.isdir(path) and _PROMPT_DIR.match(name) and _is_own_prompt_dir(path):
            continue
        foreign.append(name)
    return foreign


def _earlier_settings(out: str) -> dict | None:
    path = os.path.join(out, "sampling.json")
    if not os.path.isfile(path):
        return None
    try:
        meta = read_json(path)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and ("vistok_version" in meta or "mode" in meta) else None


def guard_samples_dir(out: str, overwrite: bool, inputs=()) -> None:
    """Refuse a samples folder that holds anything, unless it holds only an earlier sample.py's output and
    ``overwrite`` is given (then ``clear_samples`` removes exactly those files)."""
    for src in inputs:
        if src and os.path.exists(src) and os.path.realpath(src) == os.path.realpath(out):
            raise OutputError(f"--out {out}: is also an input folder; nothing was written (choose a new folder)")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise OutputError(f"--out {out}: exists and is not a folder; nothing was written")
    if not os.listdir(out):
        return
    earlier = _earlier_settings(out)
    if earlier is None:
        raise OutputError(f"--out {out}: the folder is not empty and holds no earlier samples of sample.py "
                          f"(no sampling.json); nothing was written (choose a new or empty folder)")
    if not overwrite:
        raise OutputError(f"--out {out}: holds earlier samples ({earlier.get('num_images', '?')} images, "
                          f"sampling.json); pass --overwrite to replace them, or choose a new folder: stale images "
                          f"would otherwise mix into a score")
    foreign = _foreign_entries(out, set(earlier.get("files") or []))
    if foreign:
        raise OutputError(f"--out {out}: besides earlier samples it holds {', '.join(foreign[:5])}"
                          f"{', ...' if len(foreign) > 5 else ''}, which sample.py did not write; nothing was "
                          f"deleted (move them, or choose a new folder)")


def clear_samples(out: str) -> None:
    """Delete an earlier sample.py's output from ``out`` (after ``guard_samples_dir`` allowed it)."""
    if not os.path.isdir(out) or not os.listdir(out):
        return
    earlier = _earlier_settings(out) or {}
    if _foreign_entries(out, set(earlier.get("files") or [])):
        raise OutputError(f"--out {out}: holds files sample.py did not write; nothing was deleted")
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name != "sampling.json":
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    os.unlink(os.path.join(out, "sampling.json"))  # last: an interrupted clear can be cleared again


def start_samples(out: str, version: str) -> None:
    """Mark ``out`` as sample.py's before the first image, so an interrupted run can be replaced with --overwrite."""
    write_json(os.path.join(out, "sampling.json"), {"mode": "in progress", "complete": False, "vistok_version": version})


def check_complete(folder: str) -> None:
    """Refuse to score a samples folder whose sample.py run did not finish."""
    meta = _earlier_settings(folder) if os.path.isdir(folder) else None
    if meta is not None and meta.get("complete") is False:
        raise ValueError(f"--samples {folder}: sample.py did not finish there (sampling.json says 'in progress'); "
                         f"sample again with --overwrite")


def save_grid(images: torch.Tensor, path: str, nrow: int = 8) -> None:
    """images in model range [-1, 1] -> one PNG (written atomically)."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    save_image(to_unit(images.float().cpu()), tmp, nrow=max(1, nrow), padding=1)
    os.replace(tmp, path)


def read_prompts(path: str) -> list[dict]:
    """GenEval metadata jsonl (one prompt per line) with the keys checked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file '{path}' does not exist")
    prompts = []
    for n, meta in read_jsonl(path):
        missing = [k for k in ("tag", "prompt", "include") if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise ValueError(f"{path}:{n}: missing key(s) {missing} (GenEval metadata: tag, prompt, include[, exclude])")
        prompts.append(meta)
    if not prompts:
        raise ValueError(f"prompt file '{path}' is empty")
    return prompts


def write_prompt_folder(root: str, index: int, metadata: dict, images) -> list[str]:
    """Write one prompt in the official layout: <root>/<index:05d>/metadata.jsonl + samples/<n>.png."""
    from PIL import Image

    folder = os.path.join(root, f"{index:05d}")
    os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps(metadata) + "\n")
    paths = []
    for n, img in enumerate(images):
        path = os.path.join(folder, "samples", f"{n:04d}.png")
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
