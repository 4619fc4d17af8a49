#!/usr/bin/env python
"""On a CUDA machine with mamba-ssm built (pip install -e .[cuda]): vistok's pure-PyTorch Mamba path against
mamba-ssm's fused kernels, same weights, same inputs; and their speed.

    python scripts/gpu_mamba_check.py [--batch 8] [--length 1024] [--dim 256]

1. selective scan: vistok's ``selective_scan`` vs ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
   (forward and input gradients, float32), max abs / relative differences.
2. the mixer: ``mamba_ssm.Mamba(d_model)`` weights loaded into ``vistok.nn.mamba.Mamba(d_model)`` (the same
   parameter names), outputs compared with vistok's kernel path switched off (``use_kernels=False``) and on.
3. forward + backward time of the scan: vistok's path / mamba-ssm's kernel.
Last line: {"scan_max_abs_diff", "grad_max_abs_diff", "mixer_max_abs_diff", "speed_ratio_fallback_over_kernel", ...}
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.nn.mamba import Mamba  # noqa: E402
from vistok.nn.selective_scan import selective_scan  # noqa: E402


def timed(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--dim", type=int, default=256)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    from mamba_ssm import Mamba as RefMamba
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    dev, b, L, d, n = "cuda", args.batch, args.length, 2 * args.dim, 16
    g = torch.Generator(device=dev).manual_seed(0)
    x = dict(u=torch.randn(b, d, L, device=dev, generator=g), delta=torch.randn(b, d, L, device=dev, generator=g) * 0.5,
             A=-torch.exp(torch.randn(d, n, device=dev, generator=g) * 0.5), B=torch.randn(b, n, L, device=dev, generator=g),
             C=torch.randn(b, n, L, device=dev, generator=g), D=torch.randn(d, device=dev, generator=g),
             z=torch.randn(b, d, L, device=dev, generator=g), delta_bias=torch.randn(d, device=dev, generator=g) * 0.1)

    def run(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y = fn(**leaves, delta_softplus=True)
        y.square().mean().backward()
        return y.detach(), {k: v.grad for k, v in leaves.items()}

    y_ours, g_ours = run(selective_scan)
    y_ref, g_ref = run(selective_scan_fn)
    out = {"scan_max_abs_diff": float((y_ours - y_ref).abs().max()),
           "scan_max_rel_diff": float(((y_ours - y_ref).abs() / (y_ref.abs() + 1e-3)).max()),
           "grad_max_abs_diff": max(float((g_ours[k] - g_ref[k]).abs().max()) for k in g_ours)}
    t_ours, t_ref = timed(lambda: run(selective_scan)), timed(lambda: run(selective_scan_fn))
    out.update(speed_ratio_fallback_over_kernel=round(t_ours / t_ref, 2), seconds_fallback=t_ours, seconds_kernel=t_ref)
    torch.manual_seed(0)
    ref = RefMamba(args.dim).to(dev)
    ours = Mamba(args.dim, use_kernels=False).to(dev)
    ours.load_state_dict(ref.state_dict(), strict=True)
    h = torch.randn(2, 256, args.dim, device=dev)
    with torch.no_grad():
        r = ref(h)
        out["mixer_max_abs_diff"] = float((ours(h) - r).abs().max())
        ours.use_kernels = True
        out["mixer_kernel_path_max_abs_diff"] = float((ours(h) - r).abs().max())
    out.update(device=torch.cuda.get_device_name(), shape=f"B={b} D={d} L={L} N={n}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
