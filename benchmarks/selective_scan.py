#!/usr/bin/env python
"""vistok's pure-PyTorch selective scan (forward + backward) against (1) a plain per-step loop through autograd
and (2) mamba-ssm's reference ``selective_scan_ref``, on this machine, same inputs.

    python benchmarks/selective_scan.py [--mamba-src DIR] [--repeats 3]

(1) at B=2, D=32, L=1024, N=16; (2) at B=8, D=512, L=256, N=16 (the issue's sizes). mamba-ssm is not
installable on a machine without CUDA (its build needs nvcc), so (2) imports ``selective_scan_interface.py``
from an unpacked mamba-ssm source tree (--mamba-src; default: the first mamba_ssm-*/ under /tmp/mamba_src)
with stand-ins for its compiled CUDA module and its Triton layer norm, which ``selective_scan_ref`` does not
use. Get the source with:
    mkdir -p /tmp/mamba_src && curl -sL "$(python -c 'import json,urllib.request; d=json.load(urllib.request.urlopen("https://pypi.org/pypi/mamba-ssm/json")); print([u["url"] for u in d["urls"] if u["filename"].endswith(".tar.gz")][0])')" | tar xz -C /tmp/mamba_src
The stand-ins live only in this benchmark, never in vistok. Times: median of --repeats after a warm-up.
Last line: {"speedup_vs_sequential": x, "speedup_vs_mamba_ref": x, ...}
"""
import argparse
import glob
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vistok.nn.selective_scan import selective_scan, selective_scan_loop  # noqa: E402


def load_mamba_ref(src: str):
    """selective_scan_ref from an unpacked mamba-ssm source, with stand-ins for what it cannot import here."""
    root = src if os.path.isdir(os.path.join(src, "mamba_ssm")) else None
    if root is None:
        found = sorted(glob.glob(os.path.join(src, "mamba_ssm-*")))
        root = found[-1] if found else None
    if root is None:
        return None, None
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    ln = types.ModuleType("mamba_ssm.ops.triton.layer_norm")
    ln._layer_norm_fwd = None
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.utils"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules.setdefault(name, pkg)
    sys.modules["mamba_ssm.ops.triton.layer_norm"] = ln
    spec = importlib.util.spec_from_file_location("mamba_ref", os.path.join(root, "mamba_ssm", "ops", "selective_scan_interface.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(os.path.join(root, "PKG-INFO"), encoding="utf-8") as f:
        version = next((line.split(":", 1)[1].strip() for line in f if line.startswith("Version:")), "?")
    return mod.selective_scan_ref, version


def make(b, d, L, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(b, d, L, generator=g), delta=torch.randn(b, d, L, generator=g) * 0.5,
                A=-torch.exp(torch.randn(d, n, generator=g) * 0.5), B=torch.randn(b, n, L, generator=g),
                C=torch.randn(b, n, L, generator=g), D=torch.randn(d, generator=g), z=torch.randn(b, d, L, generator=g),
                delta_bias=torch.randn(d, generator=g) * 0.1)


def timed(fn, x, repeats):
    def once():
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        t0 = time.perf_counter()
        y = fn(**leaves, delta_softplus=True)
        y.square().mean().backward()
        return time.perf_counter() - t0, y.detach()

    once()
    runs = [once() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), runs[0][1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mamba-src", default="/tmp/mamba_src")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    x = make(2, 32, 1024, 16)
    t_ours, y_ours = timed(selective_scan, x, args.repeats)
    t_loop, y_loop = timed(selective_scan_loop, x, args.repeats)
    out = {"speedup_vs_sequential": round(t_loop / t_ours, 2), "seq_case": "B=2 D=32 L=1024 N=16",
           "seconds_ours_seq_case": round(t_ours, 4), "seconds_loop": round(t_loop, 4),
           "max_abs_diff_vs_loop": float((y_ours - y_loop).abs().max())}
    print(f"vs loop: ours {t_ours:.3f}s, loop {t_loop:.3f}s", flush=True)
    ref, version = load_mamba_ref(args.mamba_src)
    if ref is None:
        print(f"mamba-ssm source not found under {args.mamba_src}: skipping the reference (see --help)", flush=True)
        out["speedup_vs_mamba_ref"] = None
    else:
        x = make(8, 512, 256, 16)
        t_ours2, y2 = timed(selective_scan, x, args.repeats)
        t_ref, y_ref = timed(ref, x, max(1, args.repeats - 2))
        print(f"vs mamba ref: ours {t_ours2:.3f}s, ref {t_ref:.3f}s", flush=True)
        out.update(speedup_vs_mamba_ref=round(t_ref / t_ours2, 2), ref_case="B=8 D=512 L=256 N=16",
                   seconds_ours_ref_case=round(t_ours2, 4), seconds_mamba_ref=round(t_ref, 4),
                   max_abs_diff_vs_mamba_ref=float((y2 - y_ref).abs().max()), mamba_ssm_source=version)
    out.update(threads=torch.get_num_threads(), torch=torch.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
