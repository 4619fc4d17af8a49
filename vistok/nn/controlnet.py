"""A ControlNet branch over a diffusers ``UNet2DConditionModel`` for a dense condition already on the latent grid
(Layton's code map): ``ControlNetModel.from_unet`` (a trainable copy of the UNet's encoder with zero-initialised
output convs), its stride-2 conditioning embedding (made for pixel-space hint images at 8x the latent size)
replaced by a stride-1 one, as LaCToK does. The replacement keeps diffusers' module names (``conv_in``,
``blocks``, ``conv_out``) so converted checkpoints load by name; its ``conv_out`` is zero-initialised, so at
initialisation the branch adds exactly nothing to the UNet."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class StrideOneConditioningEmbedding(nn.Module):
    """conditioning_channels -> channels[0] -> ... -> channels[-1] -> out_channels, 3x3 convs with SiLU, all stride
    1 (diffusers' ``ControlNetConditioningEmbedding`` halves the resolution at every stage); the last conv zero."""

    def __init__(self, conditioning_channels: int, out_channels: int, channels: tuple[int, ...] = (32, 96, 256)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.conv_in = nn.Conv2d(conditioning_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(cond))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)


def controlnet_from_unet(unet, conditioning_channels: int, embedding_channels: tuple[int, ...] = (32, 96, 256)):
    """A ``diffusers.ControlNetModel`` copied from ``unet`` (its weights, when they are real), conditioned through a
    ``StrideOneConditioningEmbedding`` of ``conditioning_channels`` inputs at the latent resolution."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                   conditioning_embedding_out_channels=tuple(embedding_channels))
    net.controlnet_cond_embedding = StrideOneConditioningEmbedding(
        conditioning_channels, unet.config.block_out_channels[0], embedding_channels)
    return net
