"""LPIPS (Zhang et al. 2018) over torchvision's VGG-16, with every weight read from local files.

    LPIPS(vgg_weights="vgg16.pth", lin_weights="lpips_vgg_v0.1.pth")

``vgg_weights``: a torchvision ``vgg16`` state dict (``features.<i>.weight``...; .pth read weights-only, or
.safetensors). ``lin_weights``: LPIPS v0.1's calibrated 1x1 layers (``lin<k>.model.1.weight``, the file
the ``lpips`` package ships as ``weights/v0.1/vgg.pth``); without it every channel weighs 1/C (the
uncalibrated "baseline" variant). Inputs in [-1, 1]; grey images are repeated to RGB. Frozen, never in
a tokenizer's state dict: tokenizers load it lazily from ``lpips_path`` like TokenFlow's teacher.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from vistok.weights import read_state_dict

TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    def __init__(self, vgg_weights: str, lin_weights: str | None = None):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features[: TAPS[-1] + 1]
        state = {k[len("features."):]: v for k, v in read_state_dict(vgg_weights, "LPIPS VGG-16").items() if k.startswith("features.")}
        try:  # the feature layers up to relu5_3 hold every conv of VGG-16's features: a strict load
            self.features.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"LPIPS: '{vgg_weights}' does not hold torchvision VGG-16 feature weights "
                             f"('features.<i>.weight/bias'): {str(e).splitlines()[0]}") from e
        self.lins = nn.ParameterList(nn.Parameter(torch.full((c,), 1.0 / c), requires_grad=False) for c in CHANNELS)
        if lin_weights:
            lin = read_state_dict(lin_weights, "LPIPS linear-layer")
            for k, c in enumerate(CHANNELS):
                key = f"lin{k}.model.1.weight"
                if key not in lin or lin[key].numel() != c:
                    raise ValueError(f"LPIPS: '{lin_weights}' needs '{key}' with {c} values")
                self.lins[k].data.copy_(lin[key].flatten())
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: B,C,H,W in [-1, 1] (C = 1 or 3) -> distance per image, B."""
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        total = a.new_zeros(a.shape[0], dtype=torch.float32)
        for fa, fb, w in zip(self._taps(a), self._taps(b), self.lins):
            fa = fa.float() / (fa.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb.float() / (fb.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((fa - fb).pow(2) * w[None, :, None, None]).sum(1).mean((1, 2))
        return total


def load_lpips(path: str, device=None) -> LPIPS:
    """``path``: a folder with ``vgg16.pth`` or ``vgg16.safetensors`` (and optionally ``lin.pth``), or one VGG file."""
    if os.path.isdir(path):
        vgg = next((os.path.join(path, n) for n in ("vgg16.safetensors", "vgg16.pth") if os.path.isfile(os.path.join(path, n))), None)
        if vgg is None:
            raise FileNotFoundError(f"LPIPS: folder '{path}' has no vgg16.safetensors or vgg16.pth")
        lin = next((os.path.join(path, n) for n in ("lin.safetensors", "lin.pth") if os.path.isfile(os.path.join(path, n))), None)
    else:
        vgg, lin = path, None
    return LPIPS(vgg, lin).to(device)
