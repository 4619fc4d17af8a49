"""A small ``diffusers.UNet2DConditionModel`` from a few numbers (the CPU-sized denoisers of SEED's decoder and
Layton's consistency decoder): one entry of ``channels`` per resolution, attention (self + cross) at the levels in
``attn_levels``, plain conv blocks elsewhere; ``extra`` goes to the UNet as is (e.g. a class embedding)."""
from __future__ import annotations


def small_unet(owner: str, sample_size: int, in_channels: int, out_channels: int, channels, layers: int, attn_levels,
               heads: int, groups: int, cross_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    n = len(channels)
    bad = [lv for lv in attn_levels if not 0 <= int(lv) < n]
    if bad:
        raise ValueError(f"{owner}: attn_levels {list(attn_levels)} has levels {bad} outside 0..{n - 1}")
    if any(c % groups for c in channels):
        raise ValueError(f"{owner}: block_out_channels {list(channels)} must be multiples of norm_num_groups {groups}")
    if sample_size % 2 ** (n - 1):
        raise ValueError(f"{owner}: the UNet's input ({sample_size} px) is not divisible by its downsampling "
                         f"{2 ** (n - 1)} (block_out_channels {list(channels)})")
    attn = {int(lv) for lv in attn_levels}
    down = tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(n)))
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels, block_out_channels=tuple(channels),
        layers_per_block=layers, down_block_types=down, up_block_types=up, cross_attention_dim=cross_dim,
        attention_head_dim=heads,  # diffusers' name for the head count
        norm_num_groups=groups, **extra)
