"""Checkpoint folders: atomic writes, the latest complete checkpoint, pruning.

A checkpoint is written into ``checkpoint-<step>.tmp/`` and renamed to ``checkpoint-<step>/`` only
after every file in it is on disk, with ``trainer_state.json`` written last. ``latest`` is the
highest-numbered folder that has that file, so a half-written checkpoint is never picked up.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "trainer_state.json"


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``ckpt_dir`` as (step, path), oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        path = os.path.join(ckpt_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_NAME)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str, ckpt_dir: str) -> str | None:
    """``latest`` -> newest complete checkpoint (or None on a fresh run); a path -> that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(ckpt_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(resume, STATE_NAME)):
        raise FileNotFoundError(f"train.resume='{resume}': not a complete checkpoint folder ({STATE_NAME} missing); "
                                f"expected 'latest' or a checkpoint-<step> folder")
    return resume


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE_NAME), encoding="utf-8") as f:
        return json.load(f)


def finalize(tmp_dir: str, final_dir: str, state: dict) -> None:
    """Write the state file last, then move the folder into place."""
    atomic_write_json(os.path.join(tmp_dir, STATE_NAME), state)
    if os.path.exists(final_dir):  # a re-run of the same step: replace it
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(os.path.dirname(final_dir))


def prune(ckpt_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete checkpoints (0 keeps all) and stale .tmp folders."""
    removed = []
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        if name.endswith(".tmp"):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
    if keep > 0:
        for _, path in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
