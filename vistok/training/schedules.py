"""Learning-rate schedules by name (``train.lr_schedule``), registered like models: ``@register_schedule``.

Each is ``build(optimizer, t, num_processes) -> LRScheduler`` for the train section ``t``. Accelerate steps a
prepared scheduler once per process per optimiser step, so step counts are multiplied by ``num_processes``.
"""
from __future__ import annotations

import math

import torch

from vistok.registry import lookup, register_schedule


def _diffusers(name: str, opt, t, n: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, opt, num_warmup_steps=t.warmup_steps * n, num_training_steps=t.max_steps * n)


@register_schedule("constant")
def constant(opt, t, n: int):
    """Linear warm-up over ``warmup_steps``, then constant (LlamaGen, CATANet's first 300k iterations)."""
    return _diffusers("constant_with_warmup", opt, t, n)


@register_schedule("cosine")
def cosine(opt, t, n: int):
    """Linear warm-up, then half a cosine to 0 at ``max_steps``."""
    return _diffusers("cosine", opt, t, n)


@register_schedule("linear")
def linear(opt, t, n: int):
    """Linear warm-up, then linear decay to 0 at ``max_steps``."""
    return _diffusers("linear", opt, t, n)


def constant_cosine_factor(step: int, warmup: int, decay_start: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, constant until ``decay_start``, then half a cosine to ``min_ratio`` at ``total``
    (the xAR / MAR recipe: warm-up 100 epochs, constant to 600, cosine to 1e-5 at 800)."""
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@register_schedule("constant_cosine")
def constant_cosine(opt, t, n: int):
    """xAR's: warm-up, constant until ``decay_start``, half a cosine to ``min_lr`` at ``max_steps``."""
    if not t.warmup_steps <= t.decay_start <= t.max_steps:
        raise ValueError(f"train.decay_start {t.decay_start}: expected warmup_steps ({t.warmup_steps}) <= decay_start "
                         f"<= max_steps ({t.max_steps})")
    if not 0 <= t.min_lr <= t.lr:
        raise ValueError(f"train.min_lr {t.min_lr}: expected 0 <= min_lr <= lr ({t.lr})")
    args = (t.warmup_steps * n, t.decay_start * n, t.max_steps * n, t.min_lr / t.lr if t.lr else 0.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: constant_cosine_factor(s, *args))


@register_schedule("multistep")
def multistep(opt, t, n: int):
    """Linear warm-up, then the lr times ``gamma`` at each of ``milestones`` (BasicSR's MultiStepLR: CATANet)."""
    steps = sorted(int(m) for m in t.milestones)
    if any(not 0 < m <= t.max_steps for m in steps):
        raise ValueError(f"train.milestones {list(t.milestones)}: expected steps in (0, max_steps={t.max_steps}]")
    warm = t.warmup_steps * n

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return t.gamma ** sum(s >= m * n for m in steps)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def build_schedule(opt, t, num_processes: int = 1):
    """The schedule ``t.lr_schedule`` names, for ``opt``."""
    return lookup("schedule", t.lr_schedule)(opt, t, num_processes)
