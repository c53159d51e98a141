"""VGG-Small for CIFAR (IR-Net, LQ-Nets): 128-128-M-256-256-M-512-512-M, FC."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from onebit.models.registry import ModelOptions, register_model

_WIDTHS = (128, 128, 256, 256, 512, 512)


@dataclass(frozen=True)
class VGGSmallOptions(ModelOptions):
    """Options of :func:`vgg_small`: ``input_hw``, the input side the FC is sized for."""

    method: str = "irnet"
    num_classes: int = 10
    input_hw: int = 32


class VGGSmall(nn.Module):
    """conv0 (FP) -> BN -> act, then five binary convs; a max-pool after convs 1, 3, 5 sits
    between the conv and its BN (conv -> pool -> BN -> act), as in IR-Net's ``VGG_SMALL_1W1A``;
    flatten -> FP Linear(512 * (H/8) * (W/8), classes).
    """

    def __init__(self, options: VGGSmallOptions):
        super().__init__()
        layers = options.layers()
        convs, bns, acts, pools = [], [], [], []
        cin = options.in_chans
        for i, width in enumerate(_WIDTHS):
            # The first conv sees the image and stays full precision, as in every seed.
            fp_conv = i == 0
            convs.append(
                nn.Conv2d(cin, width, 3, 1, 1, bias=False)
                if fp_conv
                else layers.conv3x3(cin, width)
            )
            pools.append(i % 2 == 1)
            bns.append(nn.BatchNorm2d(width))
            acts.append(layers.act(width))
            cin = width
        self.convs, self.bns, self.acts = (
            nn.ModuleList(convs),
            nn.ModuleList(bns),
            nn.ModuleList(acts),
        )
        self.pool_after = tuple(pools)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(cin * (options.input_hw // 8) ** 2, options.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # IR-Net: normal(0, sqrt(2 / (k * k * out_channels)))
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, act, pool in zip(
            self.convs, self.bns, self.acts, self.pool_after, strict=True
        ):
            x = conv(x)
            if pool:
                x = self.pool(x)
            x = act(bn(x))
        return self.fc(torch.flatten(x, 1))


@register_model(input_size=(3, 32, 32), options=VGGSmallOptions())
def vgg_small(**kwargs: object) -> nn.Module:
    """VGG-Small (IR-Net CIFAR): 6 convs 128-128-256-256-512-512, 3 max-pools, one FC.

    ``input_hw`` is the input height/width the FC is sized for (32). About 4.66 M parameters.
    """
    return VGGSmall(VGGSmallOptions.of("vgg_small", kwargs))
