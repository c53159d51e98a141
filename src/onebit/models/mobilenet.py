"""MobileNet-V1 (1.0, 224): the real-valued network ReActNet-A is derived from.

Source: Howard et al. 2017, Table 1; ReActNet (Liu et al. 2020) replaces each depthwise 3x3
conv of this layout with a full 3x3 conv (see ``reactnet_a``).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from onebit.models.reactnet import REACTNET_A_CHANNELS
from onebit.models.registry import register_model
from onebit.nn import BinaryLayers


class DepthwiseSeparable(nn.Module):
    """dw 3x3 (stride s, groups C_in) -> BN -> act -> pw 1x1 (C_in -> C_out) -> BN -> act."""

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = layers.conv(cin, cin, 3, stride, 1, groups=cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = layers.act(cin)
        self.pw = layers.conv1x1(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.pw(self.act1(self.bn1(self.dw(x))))))


class MobileNetV1(nn.Module):
    """3x3/2 stem conv (32) + BN + act, 13 depthwise-separable blocks, average pool, FC.

    Widths and strides are ReActNet-A's (stride 2 where the width changes, except 32 -> 64),
    which are MobileNet-V1's.
    """

    def __init__(self, layers: BinaryLayers, num_classes: int, in_chans: int, stem_act: str | None):
        super().__init__()
        channels = REACTNET_A_CHANNELS
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = layers.act(channels[0], stem_act)
        blocks = []
        for cin, cout in itertools.pairwise(channels):
            stride = 2 if cin != cout and cout != 64 else 1
            blocks.append(DepthwiseSeparable(layers, cin, cout, stride))
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(input_size=(3, 224, 224))
def mobilenet_v1(
    *,
    method: str = "fp",
    bits: str = "1w1a",
    num_classes: int = 1000,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = None,
) -> nn.Module:
    """MobileNet-V1 1.0: full precision by default (4.23 M parameters, 569 M MACs at 224).

    With a binary method the depthwise and pointwise convs are binary (stem conv and FC stay
    full precision). ``stem_act`` defaults to the block activation (ReLU for fp).
    """
    return MobileNetV1(BinaryLayers.of(method, bits, block_act), num_classes, in_chans, stem_act)
