"""Mamba (selective state-space) mixer with mamba-ssm's parameters, so weights move between the two.

    x B,L,d_model -> in_proj -> (x, z) -> per direction: depthwise causal conv1d -> SiLU -> x_proj -> (dt, B, C)
      -> selective scan (delta = softplus(dt_proj(dt)), A = -exp(A_log), D, gated by SiLU(z)) -> sum -> out_proj

Parameters (mamba-ssm ``Mamba``): in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj; more directions add
their own conv1d / x_proj / dt_proj / A_log / D with a suffix, as in the bidirectional ("v2", ``_b``) and
TokenUnify/SegMamba tri-directional ("v3": ``_b`` reverse, ``_s`` slice-interleaved) variants:

  forward   the sequence as given
  reverse   flipped, scanned, flipped back
  slice     the sequence cut into ``nslices`` equal parts and interleaved (part 0 token 0, part 1 token 0, ...),
            scanned, de-interleaved: with z-major tokens and nslices = the number of z slices, neighbours across
            slices are adjacent in the scan.

The scan: mamba-ssm's fused CUDA kernel when the inputs are on a GPU and ``mamba_ssm`` imports (it is the
optional ``cuda`` extra, which needs its compiled extension); otherwise vistok's pure-PyTorch
``selective_scan`` (the fallback is logged once).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.nn.selective_scan import selective_scan

logger = logging.getLogger("vistok.mamba")
SUFFIX = {"forward": "", "reverse": "_b", "slice": "_s"}
_KERNEL = {"checked": False, "fn": None}


def cuda_selective_scan():
    """mamba-ssm's fused ``selective_scan_fn`` if it imports, else None (logged once)."""
    if not _KERNEL["checked"]:
        _KERNEL["checked"] = True
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _KERNEL["fn"] = selective_scan_fn
        except Exception as e:  # not installed, or installed without its compiled CUDA extension
            logger.info(f"mamba-ssm kernels unavailable ({type(e).__name__}: {e}); using vistok's pure-PyTorch selective scan")
    return _KERNEL["fn"]


def interleave(x: torch.Tensor, nslices: int) -> torch.Tensor:
    """(..., L) -> (..., L) with the L/nslices-long parts interleaved: part p's token i goes to i * nslices + p."""
    L = x.shape[-1]
    if L % nslices:
        raise ValueError(f"mamba: slice scan needs the length {L} divisible by nslices {nslices}")
    return x.unflatten(-1, (nslices, L // nslices)).transpose(-1, -2).flatten(-2)


def deinterleave(x: torch.Tensor, nslices: int) -> torch.Tensor:
    return x.unflatten(-1, (x.shape[-1] // nslices, nslices)).transpose(-1, -2).flatten(-2)


class Mamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, directions: tuple[str, ...] = ("forward",), nslices: int = 1, use_kernels: bool = True):
        super().__init__()
        bad = [d for d in directions if d not in SUFFIX]
        if bad or not directions:
            raise ValueError(f"mamba: directions {list(directions)}; expected some of {list(SUFFIX)}")
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.directions, self.nslices, self.use_kernels = tuple(directions), nslices, use_kernels
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        for d in self.directions:
            s = SUFFIX[d]
            self.add_module(f"conv1d{s}", nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                                    padding=d_conv - 1, bias=conv_bias))
            self.add_module(f"x_proj{s}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            nn.init.uniform_(dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.add_module(f"dt_proj{s}", dt_proj)
            A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            self.register_parameter(f"A{s}_log" if s else "A_log", nn.Parameter(torch.log(A)))
            self.register_parameter(f"D{s}", nn.Parameter(torch.ones(self.d_inner)))

    def _scan(self, direction: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z B,d_inner,L (already in this direction's order) -> B,d_inner,L."""
        s = SUFFIX[direction]
        conv, x_proj, dt_proj = getattr(self, f"conv1d{s}"), getattr(self, f"x_proj{s}"), getattr(self, f"dt_proj{s}")
        A = -torch.exp(getattr(self, f"A{s}_log" if s else "A_log").float())
        L = x.shape[-1]
        x = F.silu(conv(x)[..., :L])
        dbl = x_proj(x.transpose(1, 2))  # B,L,r+2n
        dt, B, C = dbl.split([self.dt_rank, self.d_state, self.d_state], -1)
        dt = (dt @ dt_proj.weight.t()).transpose(1, 2)  # B,d_inner,L (bias added inside the scan)
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        D = getattr(self, f"D{s}").float()
        fn = cuda_selective_scan() if (self.use_kernels and x.is_cuda) else None
        scan = fn if fn is not None else selective_scan
        return scan(x.contiguous(), dt.contiguous(), A, B, C, D, z=z.contiguous(), delta_bias=dt_proj.bias.float(),
                    delta_softplus=True)

    def forward(self, hidden: torch.Tensor, nslices: int | None = None) -> torch.Tensor:
        """hidden B,L,d_model; ``nslices`` overrides the slice scan's part count for this call (e.g. the number
        of z planes of patches in this input)."""
        nslices = nslices or self.nslices
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, 1)  # B,d_inner,L each
        out = 0
        for d in self.directions:
            if d == "forward":
                out = out + self._scan(d, x, z)
            elif d == "reverse":
                out = out + self._scan(d, x.flip(-1), z.flip(-1)).flip(-1)
            else:
                y = self._scan(d, interleave(x, nslices), interleave(z, nslices))
                out = out + deinterleave(y, nslices)
        return self.out_proj(out.transpose(1, 2).to(hidden.dtype))
