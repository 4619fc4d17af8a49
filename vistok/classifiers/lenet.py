"""LeNet-5 on 32 x 32 digits: the classifier behind class accuracy and FD-LeNet (the Frechet distance of its
penultimate features), trained by ``scripts/train_lenet.py``."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.modeling import VistokModel
from vistok.registry import register_model
from vistok.schema import PosInt



@register_model("lenet")
class LeNet(VistokModel):
    kind = "classifier"

    def __init__(self, num_classes: PosInt = 10, in_channels: PosInt = 1, image_size: PosInt = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,1,32,32 in [-1, 1] -> B,84 penultimate features."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.features(x))

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = _to_lenet_input(images[i:i + batch_size])
            f = self.features(x)
            feats.append(f.double().numpy())
            logits.append(self.fc3(f).double().numpy())
        return np.concatenate(feats), np.concatenate(logits)


def _to_lenet_input(x: torch.Tensor) -> torch.Tensor:
    """Any B,C,H,W image batch in [-1, 1] -> grey 32x32, as the classifier was trained."""
    x = x.float()
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return x
