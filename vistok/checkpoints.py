"""Checkpoint folders: written atomically, verified on load, the newest complete one found, pruned.

A checkpoint is written into ``checkpoint-<step>.tmp/`` and renamed to ``checkpoint-<step>/`` only
after every file in it is on disk, with ``trainer_state.json`` written last: it holds the step and a
manifest (size and SHA-256 of every file), so a half-written checkpoint is never picked up and one
damaged later (truncated, overwritten, a file lost) is recognised. ``latest`` is the newest checkpoint
that verifies; the ones skipped on the way are reported by path.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import zipfile

import torch
from safetensors.torch import load_file

from vistok.io import atomic_write_json, fsync_dir, read_json, set_permissions

EMA_WEIGHTS, EMA_META = "ema.safetensors", "ema.json"  # written by vistok.training.ema
CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "trainer_state.json"
logger = logging.getLogger("vistok.checkpoint")


class CorruptCheckpoint(ValueError):
    """A checkpoint folder fails verification; the message names the folder and the file."""


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """Finished checkpoints in ``ckpt_dir`` (a state file present) as (step, path), oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        path = os.path.join(ckpt_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_NAME)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: str) -> dict:
    """{relative path: {"size", "sha256"}} of every file under ``folder`` except the state file."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder)
            if rel != STATE_NAME:
                p = os.path.join(root, f)
                out[rel] = {"size": os.path.getsize(p), "sha256": _digest(p)}
    return dict(sorted(out.items()))


def _check_format(path: str) -> None:
    """The file's own structure: a safetensors header that covers the file, a zip (torch.save) archive."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            f.keys()
    elif path.endswith((".bin", ".pkl", ".pt", ".pth")):
        if not zipfile.is_zipfile(path):
            raise ValueError("not a complete torch.save archive")
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad:
                raise ValueError(f"member {bad} fails its CRC")
    elif path.endswith(".json"):
        read_json(path)


def verify(path: str, need: tuple[str, ...] = ()) -> dict:
    """Check a checkpoint folder; return its state. Raises CorruptCheckpoint naming the folder and the file."""
    state_path = os.path.join(path, STATE_NAME)
    try:
        state = read_json(state_path, "checkpoint state")
    except ValueError as e:
        raise CorruptCheckpoint(f"checkpoint '{path}': {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptCheckpoint(f"checkpoint '{path}': {STATE_NAME} has no integer 'step'")
    files = state.get("files")
    for name in need:
        if not os.path.isfile(os.path.join(path, name)):
            raise CorruptCheckpoint(f"checkpoint '{path}': {name} is missing")
    if files is None:  # written before manifests existed: check every file's own structure
        names = [os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs]
    else:
        names = list(files)
        for name, meta in files.items():
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                raise CorruptCheckpoint(f"checkpoint '{path}': {name} is missing")
            if os.path.getsize(p) != meta["size"]:
                raise CorruptCheckpoint(f"checkpoint '{path}': {name} has {os.path.getsize(p)} bytes, "
                                        f"{meta['size']} were written (truncated or replaced)")
            if _digest(p) != meta["sha256"]:
                raise CorruptCheckpoint(f"checkpoint '{path}': {name} does not match the SHA-256 written with it (corrupt)")
    for name in names:
        if name == STATE_NAME:
            continue
        try:
            _check_format(os.path.join(path, name))
        except Exception as e:
            raise CorruptCheckpoint(f"checkpoint '{path}': {name} is unreadable ({type(e).__name__}: {e})") from e
    return state


def resolve_resume(resume: str, ckpt_dir: str, need: tuple[str, ...] = ()) -> str | None:
    """``latest`` -> the newest checkpoint that verifies (None on a fresh run), warning about each newer one
    skipped; a path -> that checkpoint, which must verify."""
    if not resume:
        return None
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, STATE_NAME)):
            raise FileNotFoundError(f"train.resume='{resume}': not a complete checkpoint folder ({STATE_NAME} missing); "
                                    f"expected 'latest' or a checkpoint-<step> folder")
        verify(resume, need)
        return resume
    skipped = []
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            verify(path, need)
        except CorruptCheckpoint as e:
            skipped.append(str(e))
            continue
        for msg in skipped:
            logger.warning(f"{msg}; resuming from the previous complete checkpoint '{path}' instead")
        return path
    if skipped:
        raise CorruptCheckpoint(f"train.resume=latest: no checkpoint in '{ckpt_dir}' verifies: " + "; ".join(skipped))
    return None


def read_state(path: str) -> dict:
    return read_json(os.path.join(path, STATE_NAME), "checkpoint state")


def finalize(tmp_dir: str, final_dir: str, state: dict) -> None:
    """Write the state file (with the manifest) last, then move the folder into place."""
    set_permissions(tmp_dir)
    atomic_write_json(os.path.join(tmp_dir, STATE_NAME), {**state, "files": manifest(tmp_dir)})
    if os.path.exists(final_dir):  # a re-run of the same step (resumed past a corrupt one): replace it
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    fsync_dir(os.path.dirname(final_dir))


def prune(ckpt_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` finished checkpoints (0 keeps all) and stale .tmp folders."""
    removed = []
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        if name.endswith(".tmp") and CKPT_RE.match(name[:-4]):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
    if keep > 0:
        for _, path in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def ema_state_dict(checkpoint_dir: str, model: torch.nn.Module) -> dict | None:
    """The model's state dict with EMA parameters (buffers from the live weights), or None without EMA."""
    path = os.path.join(checkpoint_dir, EMA_WEIGHTS)
    if not os.path.isfile(path):
        return None
    ema = load_file(path)
    state = model.state_dict()
    for k in ema:
        if k not in state:
            raise ValueError(f"{path}: '{k}' is not a parameter of {type(model).__name__}")
        state[k] = ema[k]
    return state
