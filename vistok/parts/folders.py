"""What a part reads from its folder: weight files (safetensors or weights-only PyTorch, single or sharded), the
tensors under a key prefix, the folder's fingerprint, and errors that name the part, the path and the class."""
from __future__ import annotations

import hashlib
import os
import struct

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def require_folder(path: str, key: str, expected: str, needs: tuple[str, ...] = ("config.json",)) -> None:
    """A clear error when ``path`` is not a folder holding ``needs``."""
    where = f"part '{key}' ({expected})"
    if not path:
        raise ValueError(f"{where}: 'path' is empty; expected a local folder such as a copy of a Hugging Face model")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{where}: folder '{path}' {'is a file' if os.path.exists(path) else 'does not exist'}"
                                f"; expected a local {expected} folder (nothing is downloaded)")
    missing = [n for n in needs if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise FileNotFoundError(f"{where}: '{path}' has no {', '.join(missing)}; expected a {expected} folder "
                                f"(saved with save_pretrained)")


def weight_files(path: str) -> list[str]:
    """The weight files of a folder: its safetensors (all shards) if any, else its PyTorch files."""
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    safe = [n for n in names if n.endswith(".safetensors")]
    chosen = safe or [n for n in names if n.endswith(WEIGHT_SUFFIXES[1:]) and not n.startswith("training_args")]
    return [os.path.join(path, n) for n in chosen]


def fingerprint(path: str) -> str:
    """sha256 over the folder's weight files: each safetensors file's header (names, dtypes, shapes, offsets: it
    changes with any retrained or resized weights, and reading it costs no weight I/O); for PyTorch files the size
    and the first MiB. '' when the folder has no weights."""
    h = hashlib.sha256()
    files = weight_files(path)
    for f in files:
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            if f.endswith(".safetensors"):
                n = struct.unpack("<Q", fh.read(8))[0]
                h.update(fh.read(n))
            else:
                h.update(str(os.path.getsize(f)).encode())
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16] if files else ""


def read_prefixed(path: str, prefixes: dict[str, str], key: str, expected: str) -> dict[str, torch.Tensor]:
    """{new name: tensor} for every tensor of the folder whose key starts with one of ``prefixes`` (old -> new,
    e.g. {"vision_model.": ""}; "" takes every key; a prefix without a final dot names one tensor, e.g. "query_tokens"); only those
    tensors are read from safetensors files, so a composite folder's language model is never loaded. An error
    names the prefix when nothing matches."""
    from safetensors import safe_open

    from vistok.weights import read_state_dict

    out: dict[str, torch.Tensor] = {}
    hit: set[str] = set()
    for f in weight_files(path):
        if f.endswith(".safetensors"):
            with safe_open(f, "pt") as fh:
                for k in fh.keys():
                    new = _take(k, prefixes, hit)
                    if new is not None:
                        out[new] = fh.get_tensor(k)
        else:
            for k, v in read_state_dict(f, f"part '{key}'").items():
                new = _take(k, prefixes, hit)
                if new is not None:
                    out[new] = v
    absent = [p for p in prefixes if p not in hit]
    if absent:
        raise ValueError(f"part '{key}' ({expected}): no weights under {absent} in '{path}' "
                         f"(files {[os.path.basename(f) for f in weight_files(path)]})")
    return out


def _take(k: str, prefixes: dict[str, str], hit: set) -> str | None:
    """The new name of key ``k`` (recording which prefix matched), or None when no prefix takes it."""
    for old, new in prefixes.items():
        if old in ("", k) or (old.endswith(".") and k.startswith(old)):
            hit.add(old)
            return new if old == k else new + k[len(old):]
    return None


def load_strict(module: torch.nn.Module, state: dict, source: str, key: str) -> None:
    """``load_state_dict`` that names the part, the folder and the keys on any mismatch."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or bad:
        raise ValueError(f"part '{key}': weights in '{source}' do not fit {type(module).__name__}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shape mismatches {bad[:5]}")
    module.load_state_dict(state, strict=True)
