"""Pieces several model files share: the classifier head and weight initialisation."""

from __future__ import annotations

import torch
import torch.nn as nn


class BNHead(nn.Module):
    """Global average pool, BatchNorm1d, full-precision Linear (IR-Net / ReCU CIFAR head)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


def kaiming_init_convs(model: nn.Module) -> None:
    """He-normal init of every conv weight, binary ones included (IR-Net / ReCU CIFAR code)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
