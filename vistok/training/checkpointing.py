"""Training checkpoints through accelerate: written atomically (``vistok.checkpoints`` holds the folder format),
the one to resume from found and verified, and loaded."""
from __future__ import annotations

import os
import shutil
import signal

from accelerate import Accelerator
from accelerate.logging import get_logger
from omegaconf import DictConfig

from vistok import checkpoints as ckpt
from vistok.config import save_config

logger = get_logger("vistok.train")
FAULT_KILL_CKPT_ENV = "VISTOK_FAULT_KILL_IN_CHECKPOINT"  # test hook: SIGKILL while writing that step's checkpoint


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the partial folder is gone, the previous checkpoints are kept."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def save_checkpoint(accelerator: Accelerator, ckpt_dir: str, step: int, cfg: DictConfig) -> str:
    """Write checkpoint-<step>/ atomically. Any failure while writing (a full disk raises torch's RuntimeError,
    not OSError) removes the partial folder and raises CheckpointWriteError naming the checkpoint and the cause."""
    final = os.path.join(ckpt_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process and os.path.isdir(tmp):
            shutil.rmtree(tmp)  # left by a process killed while writing it
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp, safe_serialization=True)
        if int(os.environ.get(FAULT_KILL_CKPT_ENV, "-1")) == step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die with the checkpoint half written
        accelerator.wait_for_everyone()  # every rank's RNG file is in tmp before it is renamed
        if accelerator.is_main_process:
            save_config(cfg, os.path.join(tmp, "config.yaml"))
            ckpt.finalize(tmp, final, {"step": step})
    except Exception as e:  # drop the partial folder, keep every complete checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        kept = ckpt.list_checkpoints(ckpt_dir)
        raise CheckpointWriteError(f"could not write checkpoint {final} ({type(e).__name__}: {e}); the partial "
                                   f"folder was removed and the latest complete checkpoint is kept: "
                                   f"{kept[-1][1] if kept else 'none yet'}", getattr(e, "errno", None)) from e
    if accelerator.is_main_process:
        removed = ckpt.prune(ckpt_dir, cfg.train.checkpoints_total_limit)
        logger.info(f"saved {final}" + (f"; pruned {len(removed)}" if removed else ""))
    accelerator.wait_for_everyone()
    return final


def resume_path(accelerator, t, ckpt_dir: str) -> str | None:
    """The checkpoint to resume from (verified; a corrupt newest one is skipped with a warning naming both)."""
    path = ckpt.resolve_resume(t.resume, ckpt_dir, need=("model.safetensors",))
    if path is None:
        return None
    rng = os.path.join(path, f"random_states_{accelerator.process_index}.pkl")
    if not os.path.isfile(rng):
        if not t.resume_inexact:
            raise ckpt.CorruptCheckpoint(f"checkpoint '{path}' has no RNG state for rank {accelerator.process_index} "
                                         f"({os.path.basename(rng)}): resuming would not be exact; pass "
                                         f"train.resume_inexact=true to resume anyway")
        logger.warning(f"{rng} is missing: resuming without the RNG state (train.resume_inexact=true); the run is "
                       f"no longer exactly reproducible")
    return path


def load_resume(accelerator, path: str, ckpt_dir: str) -> int:
    """Load the whole training state from ``path``; returns its step. Newer checkpoints that failed verification
    are moved aside (``.corrupt``), never pruned."""
    try:
        accelerator.load_state(path)
    except Exception as e:
        raise ckpt.CorruptCheckpoint(f"checkpoint '{path}' does not fit this config ({type(e).__name__}: "
                                     f"{str(e)[:500]}); nothing was changed (was model or train changed since it was "
                                     f"written?)") from e
    step = int(ckpt.read_state(path)["step"])
    if accelerator.is_main_process:
        for s, p in ckpt.list_checkpoints(ckpt_dir):
            if s > step:
                os.replace(p, p + ".corrupt")
                logger.warning(f"moved the unreadable {p} aside to {p}.corrupt")
    logger.info(f"resumed from {path} at step {step}")
    return step
