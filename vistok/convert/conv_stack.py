"""LlamaGen/taming VQGAN encoder-decoder keys -> ``vistok.nn.conv`` keys (also TokenFlow's pixel branch).

Official layout: ``encoder.conv_blocks.<level>.res.<j>`` (norm1, conv1, norm2, conv2, nin_shortcut),
``...attn.<j>`` (norm, q, k, v, proj_out; lowest resolution only), ``...downsample.conv``, ``encoder.mid.
{0,1,2}`` (res, attn, res); the decoder's ``conv_blocks.<i>`` run from the lowest resolution up, with
``num_res_blocks + 1`` residual blocks and ``upsample.conv``. vistok keeps the blocks in one Sequential
(``encoder.down.<n>``, ``decoder.up.<n>``), a fused 1x1 ``qkv`` conv and ``skip`` for the shortcut.
"""
from __future__ import annotations

import torch

from vistok.convert.common import Taker, count_indexed


def infer_arch(state: dict, source: str) -> dict:
    """ch, ch_mult, num_res_blocks, z_channels, attn_mid, attn_last_level, in_channels from the shapes."""
    try:
        conv_in = state["encoder.conv_in.weight"]
        levels = count_indexed(state, "encoder.conv_blocks")
        ch = conv_in.shape[0]
        ch_mult = [state[f"encoder.conv_blocks.{lv}.res.0.conv1.weight"].shape[0] // ch for lv in range(levels)]
        return dict(in_channels=conv_in.shape[1], ch=ch, ch_mult=ch_mult,
                    num_res_blocks=count_indexed(state, "encoder.conv_blocks.0.res"),
                    z_channels=state["encoder.conv_out.weight"].shape[0],
                    attn_mid="encoder.mid.1.q.weight" in state,
                    attn_last_level=f"encoder.conv_blocks.{levels - 1}.attn.0.q.weight" in state)
    except KeyError as e:
        raise KeyError(f"{source}: not a LlamaGen/taming VQGAN encoder: missing key {e}") from e


def _res(t: Taker, official: str, ours: str) -> None:
    for n in ("norm1", "conv1", "norm2", "conv2"):
        t.copy(f"{official}.{n}", f"{ours}.{n}")
    if t.has(f"{official}.nin_shortcut.weight"):
        t.copy(f"{official}.nin_shortcut", f"{ours}.skip")


def _attn(t: Taker, official: str, ours: str) -> None:
    t.copy(f"{official}.norm", f"{ours}.norm")
    t.out[f"{ours}.qkv.weight"] = torch.cat([t.get(f"{official}.{n}.weight") for n in "qkv"], 0)
    t.out[f"{ours}.qkv.bias"] = torch.cat([t.get(f"{official}.{n}.bias") for n in "qkv"], 0)
    t.copy(f"{official}.proj_out", f"{ours}.proj")


def _mid(t: Taker, official: str, ours: str, attn: bool) -> None:
    _res(t, f"{official}.0", f"{ours}.0")
    if attn:
        _attn(t, f"{official}.1", f"{ours}.1")
    _res(t, f"{official}.2", f"{ours}.{2 if attn else 1}")


def encoder(t: Taker, arch: dict, official: str = "encoder", ours: str = "encoder") -> None:
    levels, nres = len(arch["ch_mult"]), arch["num_res_blocks"]
    t.copy(f"{official}.conv_in", f"{ours}.conv_in")
    n = 0
    for lv in range(levels):
        for j in range(nres):
            _res(t, f"{official}.conv_blocks.{lv}.res.{j}", f"{ours}.down.{n}")
            n += 1
            if arch["attn_last_level"] and lv == levels - 1:
                _attn(t, f"{official}.conv_blocks.{lv}.attn.{j}", f"{ours}.down.{n}")
                n += 1
        if lv < levels - 1:
            t.copy(f"{official}.conv_blocks.{lv}.downsample.conv", f"{ours}.down.{n}.conv")
            n += 1
    _mid(t, f"{official}.mid", f"{ours}.mid", arch["attn_mid"])
    t.copy(f"{official}.norm_out", f"{ours}.norm_out")
    t.copy(f"{official}.conv_out", f"{ours}.conv_out")


def decoder(t: Taker, arch: dict, official: str = "decoder", ours: str = "decoder") -> None:
    levels, nres = len(arch["ch_mult"]), arch["num_res_blocks"]
    t.copy(f"{official}.conv_in", f"{ours}.conv_in")
    _mid(t, f"{official}.mid", f"{ours}.mid", arch["attn_mid"])
    n = 0
    for i in range(levels):  # i = 0: the lowest resolution
        for j in range(nres + 1):
            _res(t, f"{official}.conv_blocks.{i}.res.{j}", f"{ours}.up.{n}")
            n += 1
            if arch["attn_last_level"] and i == 0:
                _attn(t, f"{official}.conv_blocks.{i}.attn.{j}", f"{ours}.up.{n}")
                n += 1
        if i < levels - 1:
            t.copy(f"{official}.conv_blocks.{i}.upsample.conv", f"{ours}.up.{n}.conv")
            n += 1
    t.copy(f"{official}.norm_out", f"{ours}.norm_out")
    t.copy(f"{official}.conv_out", f"{ours}.conv_out")
