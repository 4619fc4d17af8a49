"""Reading an official checkpoint without unpickling, and taking its tensors key by key with clear errors."""
from __future__ import annotations

import torch

from vistok.weights import read_weights

WRAPPERS = ("ema", "model_ema", "params_ema", "model", "state_dict", "module", "params")  # where training scripts nest the weights
EMA_WRAPPERS = ("ema", "model_ema", "params_ema")
PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def read_checkpoint(path: str, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from a .pt/.pth/.bin (weights-only) or .safetensors file.

    A training checkpoint that nests the weights under "ema"/"model"/"state_dict" is unwrapped ("ema" first
    when ``prefer_ema``); DDP's "module." and torch.compile's "_orig_mod." prefixes are stripped."""
    state = read_weights(path, "checkpoint")
    order = WRAPPERS if prefer_ema else tuple(w for w in WRAPPERS if w not in EMA_WRAPPERS) + EMA_WRAPPERS
    while isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in order if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"'{path}': no state dict found; top-level keys {sorted(state)[:10]}, expected tensors or "
                             f"one of {list(WRAPPERS)}")
        state = inner
    if not isinstance(state, dict):
        raise ValueError(f"'{path}': expected a dict of tensors, got {type(state).__name__}")
    out = {}
    for k, v in state.items():
        if not torch.is_tensor(v):
            continue
        for pre in PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


class Taker:
    """Takes tensors out of an official state dict by name; reports what was missing or left over."""

    def __init__(self, state: dict[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()):
        self.state, self.source, self.ignore = dict(state), source, ignore
        self.out: dict[str, torch.Tensor] = {}

    def has(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str) -> torch.Tensor:
        if key not in self.state:
            near = sorted(k for k in self.state if k.rsplit(".", 2)[0] == key.rsplit(".", 2)[0])[:5]
            raise KeyError(f"{self.source}: missing key '{key}'" + (f" (keys nearby: {near})" if near else ""))
        return self.state.pop(key)

    def copy(self, official: str, ours: str, params=("weight", "bias")) -> None:
        for p in params:
            self.out[f"{ours}.{p}"] = self.get(f"{official}.{p}")

    def leftover(self) -> list[str]:
        return sorted(k for k in self.state if not any(k == i or k.startswith(i + ".") for i in self.ignore))

    def finish(self) -> dict[str, torch.Tensor]:
        left = self.leftover()
        if left:
            raise ValueError(f"{self.source}: {len(left)} keys have no place in the vistok model: {left[:8]}"
                             f"{' ...' if len(left) > 8 else ''}")
        return self.out


def count_indexed(state: dict, prefix: str) -> int:
    """How many consecutive ``prefix.<i>.`` indices the keys hold (0, 1, ...)."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in state):
        n += 1
    return n


def load_converted(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> torch.nn.Module:
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    bad = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in weights
           and weights[k].shape != own[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{source}: converted weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shape mismatches {bad[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=True)
    return model.eval()
