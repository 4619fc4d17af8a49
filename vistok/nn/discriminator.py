"""PatchGAN discriminator (pix2pix / taming) and the hinge losses used in the adversarial phase."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchGAN(nn.Module):
    def __init__(self, in_channels: int = 3, ch: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        cin = ch
        for i in range(1, num_layers + 1):
            cout = ch * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=False), nn.GroupNorm(1, cout), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss; ``fake`` must already be detached."""
    return 0.5 * (F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean())


def hinge_g_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    return -disc(fake).mean()
