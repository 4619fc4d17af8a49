"""The training engine: one optimiser step, what follows it (logs, evaluation, pictures, callbacks, checkpoints)
and the loop over epochs. The set-up that builds its parts is ``vistok.training.trainer``."""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from vistok.training.checkpointing import save_checkpoint
from vistok.training.ema import tracked
from vistok.training.visuals import evaluate_model, save_images, swapped_to_ema, to_device

logger = get_logger("vistok.train")
FAULT_KILL_ENV = "VISTOK_FAULT_KILL_AT_STEP"  # test hook: SIGKILL this process right after that step


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


@dataclass
class Parts:
    """What the set-up hands the engine: prepared (``model``, ``loss``) and unwrapped (``raw``, ``raw_loss``)."""
    model: Any
    raw: Any
    opt: Any
    sched: Any
    loader: Any
    eval_loader: Any
    train_set: Any
    loss: Any = None  # the model's loss module with parameters of its own (e.g. a GAN critic), or None
    raw_loss: Any = None
    opt_loss: Any = None
    ema: Any = None


class Engine:
    def __init__(self, cfg, accelerator, parts: Parts, callbacks=(), out_dir: str = ""):
        self.cfg, self.t, self.acc, self.p, self.callbacks = cfg, cfg.train, accelerator, parts, list(callbacks)
        self.out_dir, self.ckpt_dir = out_dir, os.path.join(out_dir, "checkpoints")
        self.losses: list = []  # [step, loss averaged over processes] at every log step of this run
        self.metrics: dict = {}
        self.kill_at = int(os.environ.get(FAULT_KILL_ENV, "-1"))
        self.fixed_batch = to_device(next(iter(parts.eval_loader)), accelerator.device)

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self, step: int) -> dict:
        t, acc = self.t, self.acc
        epoch, skip = divmod(step * t.grad_accum_steps, len(self.p.loader))
        pbar = tqdm(total=t.max_steps, initial=step, disable=not (acc.is_main_process and t.progress),
                    desc=self.cfg.name, dynamic_ncols=True)
        start, t0 = step, time.time()
        self.p.model.train()
        while step < t.max_steps:
            for batch in self._batches(epoch, skip):
                logs, grad_norm = self.train_step(batch, step)
                if not acc.sync_gradients:
                    continue
                step += 1
                pbar.update(1)
                self.after_step(step, logs, grad_norm, pbar)
                if step >= t.max_steps:
                    break
            epoch, skip = epoch + 1, 0
        pbar.close()
        elapsed = time.time() - t0
        return {"name": self.cfg.name, "start_step": start, "step": step, "mixed_precision": acc.mixed_precision,
                "seconds": round(elapsed, 2), "steps_per_second": round((step - start) / max(elapsed, 1e-9), 3),
                "metrics": self.metrics, "output_dir": self.out_dir, "num_processes": acc.num_processes,
                "losses": self.losses}

    def _batches(self, epoch: int, skip: int):
        loader = self.p.loader
        loader.set_epoch(epoch)
        if not skip:
            return loader
        batches = self.acc.skip_first_batches(loader, skip)  # a resumed epoch: the batches not yet seen
        batches.set_epoch(epoch)
        return batches

    # ---- one step ----------------------------------------------------------------------------------
    def train_step(self, batch: dict, step: int) -> tuple[dict, Any]:
        """Forward, backward, the model's optimiser step, then the loss module's own step if it asks for one."""
        p, acc = self.p, self.acc
        with acc.accumulate(p.model, *([p.loss] if p.loss is not None else [])):
            if p.raw_loss is not None:
                p.raw_loss.requires_grad_(False)  # the model reads it; only its own step trains it
            out = p.model(batch, step=step, loss_module=p.raw_loss)
            logs = {k: v.detach().float() for k, v in out.items() if not k.startswith("_") and torch.is_tensor(v)}
            bad = self._non_finite(logs, step)
            acc.backward(out["loss"] if not bad else out["loss"] * 0.0)
            grad_norm = self._clip(logs, step)
            if bad or (grad_norm is not None and not math.isfinite(float(grad_norm))):
                for q in p.model.parameters():  # on_nan=skip: drop this window's gradients
                    q.grad = None
            p.opt.step()
            p.sched.step()
            p.opt.zero_grad(set_to_none=True)
            if p.raw_loss is not None:
                logs.update(self._loss_module_step(out, step))
        return logs, grad_norm

    def _loss_module_step(self, out: dict, step: int) -> dict:
        p = self.p
        p.raw_loss.requires_grad_(True)
        own = p.raw_loss.own_loss(out, step, module=p.loss)
        if own is None:
            return {}
        loss, logs = own
        self.acc.backward(loss)
        p.opt_loss.step()
        p.opt_loss.zero_grad(set_to_none=True)
        return logs

    def _non_finite(self, logs: dict, step: int) -> dict:
        bad = {k: float(v) for k, v in logs.items() if not torch.isfinite(v)}
        flag = torch.tensor([1.0 if bad else 0.0], device=self.acc.device)
        if self.acc.num_processes > 1 and float(self.acc.reduce(flag, "sum")) > 0 and not bad:
            bad = {"other_process": float("nan")}
        if bad and self.t.on_nan == "stop":
            raise TrainingDiverged(f"non-finite loss at step {step + 1}: {bad}; the last good checkpoint in "
                                   f"{self.ckpt_dir} is kept (train.on_nan=skip skips such steps instead)")
        return bad

    def _clip(self, logs: dict, step: int):
        """The gradient norm at the end of an accumulation window (clipped at train.grad_clip; 0: only measured)."""
        if not self.acc.sync_gradients:
            return None
        t = self.t
        norm = self.acc.clip_grad_norm_(self.p.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        if not math.isfinite(float(norm)) and t.on_nan == "stop":
            raise TrainingDiverged(f"non-finite gradient norm at step {step + 1} (loss terms "
                                   f"{ {k: float(v) for k, v in logs.items()} }); last good checkpoint kept in {self.ckpt_dir}")
        return norm

    # ---- after a step ------------------------------------------------------------------------------
    def after_step(self, step: int, logs: dict, grad_norm, pbar) -> None:
        t, p, acc = self.t, self.p, self.acc
        if hasattr(p.raw, "on_step_end"):
            p.raw.on_step_end(step)
        if p.ema is not None:
            p.ema.step(tracked(p.raw))
        last = step == t.max_steps
        if step % t.log_every == 0 or last:
            self._log(step, logs, grad_norm, pbar)
        if t.eval_every and (step % t.eval_every == 0 or last) and hasattr(p.raw, "evaluate"):
            self.metrics = evaluate_model(acc, p.raw, p.ema, p.eval_loader, t.eval_batches)
            self._report(step, self.metrics)
        if t.image_every and step % t.image_every == 0 and hasattr(p.raw, "visualize") and acc.is_main_process:
            extras = {"decode": p.train_set.decode} if hasattr(p.train_set, "decode") else {}
            save_images(acc, p.raw, p.ema, self.fixed_batch, os.path.join(self.out_dir, "samples", f"step-{step:07d}.png"),
                        step, **extras)
        for cb in self.callbacks:
            with swapped_to_ema(p.raw, p.ema):
                found = cb(step=step, model=p.raw, data=p.train_set, accelerator=acc, last=last)
            if found:
                self.metrics = {**self.metrics, **found}
                self._report(step, found)
        if step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step % t.checkpoint_every == 0 or last:
            save_checkpoint(acc, self.ckpt_dir, step, self.cfg)

    def _log(self, step: int, logs: dict, grad_norm, pbar) -> None:
        vals = {f"train/{k}": float(self.acc.reduce(v, "mean")) for k, v in logs.items()}
        vals["train/lr"] = self.p.sched.get_last_lr()[0]
        if grad_norm is not None:
            vals["train/grad_norm"] = float(grad_norm)
        self.acc.log(vals, step=step)
        self.losses.append([step, vals["train/loss"]])
        pbar.set_postfix(loss=f"{vals['train/loss']:.4f}")

    def _report(self, step: int, metrics: dict) -> None:
        self.acc.log(metrics, step=step)
        logger.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
