"""Reading weight files a user hands us without running code: safetensors, or PyTorch files through
``torch.load(weights_only=True)``. Every path in vistok that accepts a .pt/.pth goes through here."""
from __future__ import annotations

import os

import torch


def read_weights(path: str, what: str = "weights"):
    """The object stored in ``path`` (a dict of tensors for safetensors; for .pt/.pth whatever weights-only
    unpickling allows: tensors, dicts, lists, numbers). Errors name the file and say nothing was executed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file '{path}' does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise ValueError(f"{what} file '{path}' is not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{what} file '{path}' could not be read as a weights-only PyTorch file ({type(e).__name__}: "
                         f"{e}); pickled code is never executed") from e


def read_state_dict(path: str, what: str = "weights") -> dict[str, torch.Tensor]:
    """``read_weights`` that must yield a flat dict of tensors."""
    state = read_weights(path, what)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{what} file '{path}': expected a state dict of tensors")
    return state
