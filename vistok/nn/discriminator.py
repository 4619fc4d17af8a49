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


class AdversarialLoss(PatchGAN):
    """The loss module of a GAN-trained tokenizer: a PatchGAN critic, its hinge losses and when they start.

    The model adds ``generator_loss`` to its own loss once ``active``; the trainer gives the critic its own
    optimiser (learning rate ``lr``) and, after the model's step, steps it on ``own_loss``. The critic is never
    part of a release (it is not a submodule of the model). State-dict keys are the PatchGAN's own."""

    def __init__(self, in_channels: int = 3, ch: int = 64, num_layers: int = 3, start: int = -1, lr: float = 1e-4):
        super().__init__(in_channels, ch, num_layers)
        self.start, self.lr = start, lr

    def active(self, step: int) -> bool:
        return 0 <= self.start <= step

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return hinge_g_loss(self, fake)

    def own_loss(self, out: dict, step: int, module: nn.Module | None = None):
        """(the critic's hinge loss on this step's ``_real``/``_fake`` images, its logs), or None before ``start``.
        ``module`` is this critic as the trainer prepared it (DDP-wrapped under several processes)."""
        if not self.active(step):
            return None
        loss = hinge_d_loss(module if module is not None else self, out["_real"].detach(), out["_fake"].detach())
        return loss, {"disc": loss.detach().float()}
