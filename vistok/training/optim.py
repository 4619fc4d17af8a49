"""Optimisers and their parameter groups.

Weight decay goes only where the papers' code puts it. The default groups (``param_groups``) decay tensors of
2 or more dimensions and nothing else (biases, norm gains, 1-D embeddings' scales), minus the names a module
lists in ``no_weight_decay()``: the rule of nanoGPT's ``configure_optimizers``, LlamaGen's ``creat_optimizer``
and, since every bias there is 1-D, MAR/xAR's ``add_weight_decay`` and timm's (TokenUnify). A module may define
``param_groups(weight_decay)`` instead to give its own groups. Which optimiser (``train.optimizer``: adamw or
adam), betas and decay each paper config uses, and the source it follows: README, "Optimisers".
"""
from __future__ import annotations

import torch

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def decay_split(module: torch.nn.Module) -> tuple[list[str], list[str]]:
    """(names that get weight decay, names that do not) among the trainable parameters, by the default rule."""
    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or _skipped(name, skip) else decay).append(name)
    return decay, no_decay


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The module's own ``param_groups(weight_decay)`` if it has one, else the default split; empty groups dropped."""
    own = getattr(module, "param_groups", None)
    if own is not None:
        return [g for g in own(weight_decay) if g["params"]]
    params = dict(module.named_parameters())
    decay, no_decay = decay_split(module)
    groups = [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(module: torch.nn.Module, t, lr: float | None = None) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``param_groups(module, train.weight_decay)``; Adam's decay is L2 (coupled),
    AdamW's decoupled, as in torch."""
    groups = param_groups(module, t.weight_decay)
    if not groups:
        raise ValueError(f"{type(module).__name__}: no trainable parameters to optimise")
    return OPTIMIZERS[t.optimizer](groups, lr=t.lr if lr is None else lr, betas=tuple(t.betas), eps=t.eps)
