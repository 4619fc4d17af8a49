"""The one training loop (accelerate). It knows nothing model-specific.

A model provides ``forward(batch, step, adversarial, discriminator) -> dict`` with a scalar ``loss``
(other scalar entries are logged; ``_real``/``_fake`` feed the discriminator), and optionally
``build_discriminator()``, ``evaluate(batches) -> dict`` and ``visualize(batch) -> images``.

Exact resume: the data order is a function of (seed, epoch) only, the loader has its own generator,
evaluation and image grids run under a forked RNG, and a checkpoint stores model, optimizer,
scheduler, EMA, RNG states and the step; resuming skips the batches already seen in the epoch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm.auto import tqdm

from vistok.config import build, save_config
from vistok.data.base import build_dataset
from vistok.nn.discriminator import hinge_d_loss
from vistok import checkpoints as ckpt
from vistok.training.ema import attach_ema
from vistok.image_files import save_grid
from vistok.training.logging import setup_logging
from vistok.training.run_lock import RunLock, check_run_folder

logger = get_logger("vistok.train")
FAULT_KILL_ENV = "VISTOK_FAULT_KILL_AT_STEP"  # test hook: SIGKILL this process right after that step
FAULT_KILL_CKPT_ENV = "VISTOK_FAULT_KILL_IN_CHECKPOINT"  # test hook: SIGKILL while writing that step's checkpoint


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/inf; the last good checkpoint is kept."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the partial folder is gone, the previous checkpoints are kept."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


class EpochShuffleSampler(Sampler):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset, batch_size: int, seed: int, shuffle: bool, num_workers: int = 0, drop_last: bool = True):
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(len(dataset), seed, shuffle),
                      drop_last=drop_last, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


def cpu_has_native_bf16() -> bool | None:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX); None where /proc/cpuinfo cannot tell."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    if not flags or " avx2" not in flags:  # not an x86 flags line (e.g. ARM): cannot tell
        return None
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def _mixed_precision(requested: str) -> str:
    """bf16 where the hardware computes it; fp32 on a GPU or x86 CPU without it (emulated bf16 convolutions run
    ~30x slower than fp32 on an AVX2-only CPU, measured), with a log line saying so."""
    if requested != "bf16":
        return requested
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_native_bf16() is not False
    if not ok:
        logging.getLogger("vistok.train").warning(
            "train.mixed_precision=bf16: this device has no native bf16 arithmetic; training in fp32")
        return "no"
    return requested


def train(cfg: DictConfig) -> dict:
    """Train the model named in ``cfg``; returns a summary (steps, time, final metrics)."""
    t = cfg.train
    out_dir = t.output_dir
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it, torchrun on CPUs starts N lone "rank 0" processes
        mixed_precision=_mixed_precision(t.mixed_precision),
        gradient_accumulation_steps=t.grad_accum_steps,
        log_with=None if t.log_with == "none" else t.log_with,
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
    )
    setup_logging(accelerator.is_main_process)
    set_seed(t.seed, device_specific=False)
    check_run_folder(out_dir, t.resume)  # every rank, before anything is written
    accelerator.wait_for_everyone()
    lock = RunLock(out_dir, force=t.force_unlock) if accelerator.is_main_process else None
    try:
        return _train(cfg, accelerator, out_dir, ckpt_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, accelerator: Accelerator, out_dir: str, ckpt_dir: str) -> dict:
    t = cfg.train
    # ---- factories ------------------------------------------------------------------------------
    model = build("model", cfg.model)
    check_data_fits(cfg.data, model)  # e.g. a generator's vocabulary against its tokenizer release, before encoding
    resume_path = _resume_path(accelerator, t, ckpt_dir)
    if t.init_from and not resume_path:
        from vistok.loading import init_from

        init_skipped = init_from(model, t.init_from, list(t.init_skip))
        logger.info(f"initialised from {t.init_from}; {len(init_skipped)} keys left to their fresh values "
                    f"(train.init_skip {list(t.init_skip)}): {init_skipped}", main_process_only=True)
    disc = model.build_discriminator() if hasattr(model, "build_discriminator") else None
    cache = {"cache_dir": os.path.join(out_dir, "token_cache")}  # for datasets that cache (e.g. pre-tokenized codes)
    train_set = build_dataset(cfg.data, "train", **cache)
    eval_set = build_dataset(cfg.data, "test", **cache)
    if len(train_set) < t.batch_size * accelerator.num_processes:
        raise ValueError(f"data: the training split has {len(train_set)} items, fewer than one global batch "
                         f"({t.batch_size} x {accelerator.num_processes} processes; train.batch_size)")
    loader = make_loader(train_set, t.batch_size, t.seed, shuffle=True, num_workers=t.num_workers)
    # evaluation: each rank its own disjoint shard of the held-out split (uneven, never padded with repeats), not
    # prepared by accelerate; the models' evaluate() sums over ranks, so every held-out item counts once
    eval_shard = Subset(eval_set, list(range(accelerator.process_index, len(eval_set), accelerator.num_processes)))
    eval_loader = make_loader(eval_shard, min(t.batch_size, len(eval_set)), t.seed, shuffle=False, drop_last=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    sched = _scheduler(opt, t, accelerator.num_processes)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    if disc is not None:
        opt_d = torch.optim.AdamW(disc.parameters(), lr=t.disc_lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        disc, opt_d = accelerator.prepare(disc, opt_d)
    raw = accelerator.unwrap_model(model)
    raw_disc = accelerator.unwrap_model(disc) if disc is not None else None
    ema = attach_ema(accelerator, raw, t.ema_decay) if t.ema_decay > 0 else None

    # ---- resume, then the config (only once the saved state has loaded and fits) ----------------------
    step = _load_resume(accelerator, resume_path, ckpt_dir) if resume_path else 0
    if accelerator.is_main_process:
        os.makedirs(ckpt_dir, exist_ok=True)
        save_config(cfg, os.path.join(out_dir, "config.yaml"))
    summary_path = os.path.join(out_dir, "train_summary.json")
    if step >= t.max_steps and os.path.isfile(summary_path):  # a finished run: nothing to do
        logger.info(f"{out_dir} is already trained to step {step} (train.max_steps={t.max_steps})")
        with open(summary_path, encoding="utf-8") as f:
            return json.load(f)
    micro = step * t.grad_accum_steps
    epoch, skip = divmod(micro, len(loader))

    if t.log_with != "none":
        accelerator.init_trackers(cfg.name, config=_flat_hparams(cfg))
    fixed_batch = _to_device(next(iter(eval_loader)), accelerator.device)
    kill_at = int(os.environ.get(FAULT_KILL_ENV, "-1"))
    pbar = tqdm(total=t.max_steps, initial=step, disable=not (accelerator.is_main_process and t.progress),
                desc=cfg.name, dynamic_ncols=True)
    summary: dict = {"name": cfg.name, "start_step": step}
    losses: list = []  # [step, loss averaged over processes] at every log step of this run
    t0, steps_this_run, last_metrics = time.time(), 0, {}
    model.train()
    while step < t.max_steps:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        if skip:
            batches.set_epoch(epoch)
        for batch in batches:
            adversarial = disc is not None and 0 <= t.disc_start <= step
            with accelerator.accumulate(model, *([disc] if disc is not None else [])):
                if raw_disc is not None:
                    raw_disc.requires_grad_(False)
                out = model(batch, step=step, adversarial=adversarial, discriminator=raw_disc)
                logs = {k: v.detach().float() for k, v in out.items() if not k.startswith("_") and torch.is_tensor(v)}
                bad = _non_finite(accelerator, logs)
                if bad and t.on_nan == "stop":
                    raise TrainingDiverged(f"non-finite loss at step {step + 1}: {bad}; the last good checkpoint in "
                                           f"{ckpt_dir} is kept (train.on_nan=skip skips such steps instead)")
                accelerator.backward(out["loss"] if not bad else out["loss"] * 0.0)
                grad_norm = None
                if accelerator.sync_gradients:  # max_norm inf: the norm without clipping, still checked
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
                    if not math.isfinite(float(grad_norm)):
                        bad = bad or {"grad_norm": float(grad_norm)}
                        if t.on_nan == "stop":
                            raise TrainingDiverged(f"non-finite gradient norm at step {step + 1} (loss terms "
                                                   f"{ {k: float(v) for k, v in logs.items()} }); last good checkpoint kept in {ckpt_dir}")
                if bad:  # skip: drop this accumulation window's gradients (the wrapped zero_grad waits for sync)
                    for p_ in model.parameters():
                        p_.grad = None
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if adversarial:
                    raw_disc.requires_grad_(True)
                    d_loss = hinge_d_loss(disc, out["_real"].detach(), out["_fake"].detach())
                    accelerator.backward(d_loss)
                    opt_d.step()
                    opt_d.zero_grad(set_to_none=True)
                    logs["disc"] = d_loss.detach().float()
            if not accelerator.sync_gradients:
                continue
            step += 1
            steps_this_run += 1
            if ema is not None:
                ema.step(raw.parameters())
            pbar.update(1)
            if step % t.log_every == 0 or step == t.max_steps:
                vals = {f"train/{k}": float(accelerator.reduce(v, "mean")) for k, v in logs.items()}
                vals["train/lr"] = sched.get_last_lr()[0]
                if grad_norm is not None:
                    vals["train/grad_norm"] = float(grad_norm)
                accelerator.log(vals, step=step)
                losses.append([step, vals["train/loss"]])
                pbar.set_postfix(loss=f"{vals['train/loss']:.4f}")
            if t.eval_every and (step % t.eval_every == 0 or step == t.max_steps) and hasattr(raw, "evaluate"):
                last_metrics = _evaluate(accelerator, raw, ema, eval_loader, t.eval_batches)
                accelerator.log(last_metrics, step=step)
                logger.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in last_metrics.items()))
            if t.image_every and step % t.image_every == 0 and hasattr(raw, "visualize") and accelerator.is_main_process:
                extras = {"decode": train_set.decode} if hasattr(train_set, "decode") else {}
                _images(accelerator, raw, ema, fixed_batch, os.path.join(out_dir, "samples", f"step-{step:07d}.png"),
                        step, **extras)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                save_checkpoint(accelerator, ckpt_dir, step, cfg)
            if step >= t.max_steps:
                break
        epoch, skip = epoch + 1, 0
    pbar.close()
    elapsed = time.time() - t0
    summary.update(step=step, mixed_precision=accelerator.mixed_precision, seconds=round(elapsed, 2), steps_per_second=round(steps_this_run / max(elapsed, 1e-9), 3),
                   metrics=last_metrics, output_dir=out_dir, num_processes=accelerator.num_processes, losses=losses)
    if accelerator.is_main_process:
        ckpt.atomic_write_json(summary_path, summary)
    accelerator.end_training()
    return summary


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


def check_data_fits(data_cfg, model) -> None:
    """A dataset class may check the model it will feed before it reads any data (``check_model(cfg, model)``)."""
    from vistok.registry import lookup

    hook = getattr(lookup("dataset", data_cfg["type"]), "check_model", None)
    if hook is not None:
        hook(data_cfg, model)


def _resume_path(accelerator, t, ckpt_dir: str) -> str | None:
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


def _load_resume(accelerator, path: str, ckpt_dir: str) -> int:
    try:
        accelerator.load_state(path)
    except Exception as e:
        raise ckpt.CorruptCheckpoint(f"checkpoint '{path}' does not fit this config ({type(e).__name__}: "
                                     f"{str(e)[:500]}); nothing was changed (was model or train changed since it was "
                                     f"written?)") from e
    step = int(ckpt.read_state(path)["step"])
    if accelerator.is_main_process:  # newer checkpoints that failed verification: keep them aside, never prune them
        for s, p in ckpt.list_checkpoints(ckpt_dir):
            if s > step:
                os.replace(p, p + ".corrupt")
                logger.warning(f"moved the unreadable {p} aside to {p}.corrupt")
    logger.info(f"resumed from {path} at step {step}")
    return step


def constant_cosine_factor(step: int, warmup: int, decay_start: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, constant until ``decay_start``, then half a cosine to ``min_ratio`` at ``total``
    (the xAR / MAR recipe: warm-up 100 epochs, constant to 600, cosine to 1e-5 at 800)."""
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _scheduler(opt, t, num_processes: int):
    from diffusers.optimization import get_scheduler

    if t.lr_schedule == "constant_cosine":
        if not t.warmup_steps <= t.decay_start <= t.max_steps:
            raise ValueError(f"train.decay_start {t.decay_start}: expected warmup_steps ({t.warmup_steps}) <= decay_start "
                             f"<= max_steps ({t.max_steps})")
        if not 0 <= t.min_lr <= t.lr:
            raise ValueError(f"train.min_lr {t.min_lr}: expected 0 <= min_lr <= lr ({t.lr})")
        args = (t.warmup_steps * num_processes, t.decay_start * num_processes, t.max_steps * num_processes, t.min_lr / t.lr if t.lr else 0.0)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: constant_cosine_factor(s, *args))
    name = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}[t.lr_schedule]
    # accelerate steps a prepared scheduler once per process per optimizer step
    return get_scheduler(name, opt, num_warmup_steps=t.warmup_steps * num_processes,
                         num_training_steps=t.max_steps * num_processes)


def _non_finite(accelerator, logs: dict) -> dict:
    bad = {k: float(v) for k, v in logs.items() if not torch.isfinite(v)}
    flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1 and float(accelerator.reduce(flag, "sum")) > 0 and not bad:
        bad = {"other_process": float("nan")}
    return bad


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _evaluate(accelerator, raw, ema, eval_loader, max_batches: int) -> dict:
    def run(prefix):
        batches = (_to_device(b, accelerator.device) for i, b in zip(range(max_batches), eval_loader))
        with torch.random.fork_rng(devices=[]), accelerator.autocast():
            return {f"{prefix}/{k}": float(v) for k, v in raw.evaluate(batches).items()}

    was_training = raw.training
    raw.eval()
    metrics = run("eval")
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
        metrics.update(run("eval_ema"))
        ema.restore(raw.parameters())
    raw.train(was_training)
    return metrics


def _images(accelerator, raw, ema, batch, path: str, step: int, **extras) -> None:
    was_training = raw.training
    raw.eval()
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        grid = raw.visualize(batch, **extras)
    if ema is not None:
        ema.restore(raw.parameters())
    raw.train(was_training)
    if grid is None:  # the model cannot draw itself (e.g. a generator without a decoder)
        return
    grid = grid.float()
    save_grid(grid, path, nrow=len(grid) // 2)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from torchvision.utils import make_grid

            from vistok.ops import to_unit

            tracker.writer.add_image("images", make_grid(to_unit(grid), nrow=len(grid) // 2), step)


def _flat_hparams(cfg: DictConfig) -> dict:
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(key, v)
            else:
                flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


logging.getLogger("PIL").setLevel(logging.WARNING)
