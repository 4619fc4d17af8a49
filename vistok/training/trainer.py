"""The one training loop (accelerate): the set-up, read top to bottom; the steps are in ``engine``. It knows no
model, loss or task: what differs between systems comes through hooks a model may provide.

- ``forward(batch, step, loss_module) -> dict`` with a scalar ``loss`` (other scalar entries are logged);
- ``param_groups(weight_decay)`` or ``no_weight_decay()``: its optimiser groups (``vistok.training.optim``);
- ``build_loss_module()``: a module with parameters of its own (e.g. a GAN critic), optimised beside the model
  (learning rate: its ``lr``); the model reads it in ``forward``; after the model's step the trainer steps it on
  ``own_loss(out, step, module)`` whenever that returns (loss, logs);
- ``on_step_end(step)``: state updates after each optimiser step (e.g. CATANet's centres);
- ``evaluate(batches) -> dict`` and ``visualize(batch) -> images``.
``train(cfg, callbacks)`` also takes callbacks ``cb(step, model, data, accelerator, last) -> dict | None`` (a
generation metric the evaluation layer builds from ``train.gen_eval``); their metrics are logged.

Exact resume: the data order is a function of (seed, epoch) only, the loader has its own generator,
evaluation and image grids run under a forked RNG, and a checkpoint stores model, optimizer,
scheduler, EMA, RNG states and the step; resuming skips the batches already seen in the epoch.
"""
from __future__ import annotations

import json
import logging
import os

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler, Subset

from vistok.config import build, save_config
from vistok.data.base import build_dataset
from vistok.io import atomic_write_json
from vistok.registry import lookup
from vistok.training.checkpointing import CheckpointWriteError, load_resume, resume_path  # noqa: F401 (public)
from vistok.training.ema import attach_ema
from vistok.training.engine import Engine, Parts, TrainingDiverged  # noqa: F401 (public)
from vistok.training.logging import setup_logging
from vistok.training.optim import build_optimizer
from vistok.training.schedules import build_schedule
from vistok.training.run_lock import RunLock, check_run_folder

logger = get_logger("vistok.train")


def train(cfg: DictConfig, callbacks=()) -> dict:
    """Train the model named in ``cfg``; returns a summary (steps, time, final metrics)."""
    t = cfg.train
    accelerator = make_accelerator(t)
    setup_logging(accelerator.is_main_process)
    set_seed(t.seed, device_specific=False)
    check_run_folder(t.output_dir, t.resume)  # every rank, before anything is written
    accelerator.wait_for_everyone()
    lock = RunLock(t.output_dir, force=t.force_unlock) if accelerator.is_main_process else None
    try:
        return _train(cfg, accelerator, list(callbacks))
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, accelerator: Accelerator, callbacks: list) -> dict:
    t, out_dir = cfg.train, cfg.train.output_dir
    ckpt_dir, summary_path = os.path.join(out_dir, "checkpoints"), os.path.join(out_dir, "train_summary.json")
    model = build("model", cfg.model)
    check_data_fits(cfg.data, model)  # e.g. a generator's vocabulary against its tokenizer release, before encoding
    resume = resume_path(accelerator, t, ckpt_dir)
    if (t.init_from or t.init_modules) and not resume:
        init_weights(model, t)
    parts = prepare(accelerator, model, t, *build_data(cfg.data, t, accelerator, out_dir))
    step = load_resume(accelerator, resume, ckpt_dir) if resume else 0
    if accelerator.is_main_process:  # only once the saved state has loaded and fits
        os.makedirs(ckpt_dir, exist_ok=True)
        save_config(cfg, os.path.join(out_dir, "config.yaml"))
    if step >= t.max_steps and os.path.isfile(summary_path):  # a finished run: nothing to do
        logger.info(f"{out_dir} is already trained to step {step} (train.max_steps={t.max_steps})")
        with open(summary_path, encoding="utf-8") as f:
            return json.load(f)
    if t.log_with != "none":
        accelerator.init_trackers(cfg.name, config=_flat_hparams(cfg))
    summary = Engine(cfg, accelerator, parts, callbacks, out_dir).run(step)
    if accelerator.is_main_process:
        atomic_write_json(summary_path, summary)
    accelerator.end_training()
    return summary


def make_accelerator(t) -> Accelerator:
    out_dir = t.output_dir
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # without it, torchrun on CPUs starts N lone "rank 0" processes
        mixed_precision=_mixed_precision(t.mixed_precision),
        gradient_accumulation_steps=t.grad_accum_steps,
        log_with=None if t.log_with == "none" else t.log_with,
        project_config=ProjectConfiguration(project_dir=out_dir, logging_dir=os.path.join(out_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=False),
    )


def build_data(data_cfg, t, accelerator, out_dir: str):
    """(training set, its loader, the held-out loader). Evaluation: each rank its own disjoint shard of the
    held-out split (uneven, never padded with repeats), not prepared by accelerate; the models' evaluate() sums
    over ranks, so every held-out item counts once."""
    cache = {"cache_dir": os.path.join(out_dir, "token_cache")}  # for datasets that cache (pre-tokenized codes)
    train_set = build_dataset(data_cfg, "train", **cache)
    eval_set = build_dataset(data_cfg, "test", **cache)
    if len(train_set) < t.batch_size * accelerator.num_processes:
        raise ValueError(f"data: the training split has {len(train_set)} items, fewer than one global batch "
                         f"({t.batch_size} x {accelerator.num_processes} processes; train.batch_size)")
    loader = make_loader(train_set, t.batch_size, t.seed, shuffle=True, num_workers=t.num_workers)
    shard = Subset(eval_set, list(range(accelerator.process_index, len(eval_set), accelerator.num_processes)))
    eval_loader = make_loader(shard, min(t.batch_size, len(eval_set)), t.seed, shuffle=False, drop_last=False)
    return train_set, loader, eval_loader


def prepare(accelerator, model, t, train_set, loader, eval_loader) -> Parts:
    """Optimisers (the model's groups; its loss module's own), the schedule, EMA; everything prepared. The
    preparation order (model first, then the loss module) fixes the checkpoint's file names."""
    loss = model.build_loss_module() if hasattr(model, "build_loss_module") else None
    opt = build_optimizer(model, t)
    sched = build_schedule(opt, t, accelerator.num_processes)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    parts = Parts(model, accelerator.unwrap_model(model), opt, sched, loader, eval_loader, train_set)
    if loss is not None:
        parts.loss, parts.opt_loss = accelerator.prepare(loss, build_optimizer(loss, t, lr=getattr(loss, "lr", t.lr)))
        parts.raw_loss = accelerator.unwrap_model(parts.loss)
    parts.ema = attach_ema(accelerator, parts.raw, t.ema_decay) if t.ema_decay > 0 else None
    return parts


def init_weights(model, t) -> None:
    from vistok.loading import init_from, init_module

    if t.init_from:
        skipped = init_from(model, t.init_from, list(t.init_skip))
        logger.info(f"initialised from {t.init_from}; {len(skipped)} keys left to their fresh values "
                    f"(train.init_skip {list(t.init_skip)}): {skipped}", main_process_only=True)
    for name, path in dict(t.init_modules).items():
        unused = init_module(model, name, path)
        logger.info(f"initialised {name} from {path}; its weights not used: {unused}", main_process_only=True)


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


def check_data_fits(data_cfg, model) -> None:
    """A dataset class may check the model it will feed before it reads any data (``check_model(cfg, model)``)."""
    hook = getattr(lookup("dataset", data_cfg["type"]), "check_model", None)
    if hook is not None:
        hook(data_cfg, model)


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
