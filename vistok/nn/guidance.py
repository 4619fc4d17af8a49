"""Classifier-free guidance, shared by every generator.

Training drops the condition (replaces it by the null condition) with some probability, so that one model
is both conditional and unconditional. Sampling runs both in one batch, [conditional; unconditional], and
blends the two outputs: uncond + s * (cond - uncond), s = 1 being the conditional model alone. The scale s
may follow a schedule over the sampling steps (tokens, scales, entities):

    constant   s at every step
    linear     from 1 at the first step to s at the last (a single step: s)
"""
from __future__ import annotations

import dataclasses

import torch

SCHEDULES = ("constant", "linear")


def drop_condition(cond: torch.Tensor, null: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace each sample's condition (along dim 0) by ``null`` (same shape, or broadcastable) with
    probability ``rate``. Call it in training only; rate 0 returns ``cond`` and draws no random numbers."""
    if rate <= 0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device) < rate
    return torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), null, cond)


def guidance_scale(scale: float, schedule: str, step: int, steps: int) -> float:
    """The guidance scale at sampling step ``step`` of ``steps`` (0-based)."""
    if schedule == "constant" or (schedule == "linear" and steps == 1):
        return scale
    if schedule == "linear":
        return 1 + (scale - 1) * step / (steps - 1)
    raise ValueError(f"cfg_schedule '{schedule}': expected one of {' | '.join(SCHEDULES)}")


def blend(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided output: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


@dataclasses.dataclass(frozen=True)
class Guidance:
    """CFG for one sampling run of ``steps`` steps: builds the doubled batch and blends its outputs.
    Scale 1 is off: the batch is not doubled and outputs pass unchanged."""
    scale: float = 1.0
    schedule: str = "constant"
    steps: int = 1

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"cfg_schedule '{self.schedule}': expected one of {' | '.join(SCHEDULES)}")
        if self.steps < 1:
            raise ValueError(f"guidance needs at least one step, got steps={self.steps}")

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    def scale_at(self, step: int) -> float:
        return guidance_scale(self.scale, self.schedule, step, self.steps)

    def double(self, x: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """[x; null] along dim 0 when active (``null`` omitted: [x; x], e.g. inputs both halves share),
        else x."""
        if not self.active:
            return x
        return torch.cat([x, x if null is None else null])

    def __call__(self, out: torch.Tensor, step: int) -> torch.Tensor:
        """Outputs of the doubled batch (2B, ...) -> guided outputs (B, ...) at ``step``; inactive: ``out``."""
        if not self.active:
            return out
        cond, uncond = out.chunk(2)
        return blend(cond, uncond, self.scale_at(step))
