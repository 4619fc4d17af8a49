"""A run folder belongs to one training at a time.

``claim_run`` is called before anything is written: an existing run is refused unless it is being
resumed, a non-empty folder that is not a run is refused, and rank 0 takes ``<run>/train.lock`` (pid,
host, the process's start time). A lock left by a dead process on this host is taken over with a log
line; a live one is refused naming its pid; one from another host is taken only with
``train.force_unlock=true`` (this host cannot see whether that process is alive).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from vistok.io import is_run_dir

LOCK_NAME = "train.lock"
logger = logging.getLogger("vistok.train")


class RunBusy(RuntimeError):
    """Another training holds the run folder, or the folder is not this training's to write."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return started is None or now is None or now == started


def check_run_folder(out_dir: str, resume: str) -> None:
    """Refuse to start a fresh training over an existing run, or inside a folder that holds other things."""
    if not os.path.isdir(out_dir):
        if os.path.exists(out_dir):
            raise RunBusy(f"train.output_dir '{out_dir}' exists and is not a folder")
        return
    if is_run_dir(out_dir) and not resume:
        raise RunBusy(f"train.output_dir '{out_dir}' already holds a training run; continue it with "
                      f"train.resume=latest, or choose a fresh folder (train.output_dir=runs/NEW); nothing was changed")
    # outside a run only what a training that stopped before writing config.yaml leaves: the pruning and
    # checkpoint clean-up below <run>/checkpoints must never reach a folder of another tool (e.g. HF's checkpoint-N)
    others = sorted(set(os.listdir(out_dir)) - {LOCK_NAME, "token_cache"})
    if others and not is_run_dir(out_dir):
        raise RunBusy(f"train.output_dir '{out_dir}' is a folder that is not a training run (it holds "
                      f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); choose a fresh folder")


class RunLock:
    def __init__(self, out_dir: str, force: bool = False):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
                     "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.makedirs(out_dir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._take_over(force)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.mine, f)
            return
        raise RunBusy(f"could not take the lock {self.path} (another training keeps taking it)")

    def _take_over(self, force: bool) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                other = json.load(f)
        except (OSError, json.JSONDecodeError):
            other = {}
        pid, host = other.get("pid"), other.get("host")
        here = socket.gethostname()
        if isinstance(pid, int) and host == here and _alive(pid, other.get("started")):
            raise RunBusy(f"{os.path.dirname(self.path)} is being trained by process {pid} on {host} (since "
                          f"{other.get('time', '?')}; lock file {self.path}); wait for it, stop it, or choose another "
                          f"train.output_dir")
        if host not in (here, None) and not force:
            raise RunBusy(f"{self.path}: the run is locked by process {pid} on host {host}, whose state this host "
                          f"cannot see; if that training has stopped, pass train.force_unlock=true")
        logger.warning(f"taking over the lock {self.path} left by process {pid} on {host} "
                       f"({'not running any more' if host == here else 'train.force_unlock=true'})")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                if json.load(f).get("pid") != self.mine["pid"]:
                    return
            os.unlink(self.path)
        except (OSError, json.JSONDecodeError):
            pass
