"""MobileNet-V1 (1.0, 224): the real-valued network ReActNet-A is derived from.

Source: Howard et al. 2017, Table 1; ReActNet (Liu et al. 2020) replaces each depthwise 3x3
conv of this layout with a full 3x3 conv (see ``reactnet_a``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn as nn

from onebit.models._common import kaiming_init_convs
from onebit.models.registry import StemOptions, register_model
from onebit.nn import BinaryLayers
from onebit.nn.bn_act import bn_act

# Output channels of the stem and of the 13 blocks (Howard et al. Table 1; ReActNet's official
# ``stage_out_channel``).
CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


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
        return bn_act(
            self.bn2, self.pw(bn_act(self.bn1, self.dw(x), None, self.act1)), None, self.act2
        )


class MobileNetV1(nn.Module):
    """3x3/2 stem conv (32) + BN + act, 13 blocks (``block``: depthwise-separable), average
    pool, FC. Stride 2 where the width changes, except 32 -> 64 (Howard et al. Table 1)."""

    def __init__(
        self,
        options: StemOptions,
        block: Callable[[BinaryLayers, int, int, int], nn.Module] = DepthwiseSeparable,
    ):
        super().__init__()
        layers = options.layers()
        self.conv1 = nn.Conv2d(options.in_chans, CHANNELS[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(CHANNELS[0])
        self.act1 = layers.act(CHANNELS[0], options.stem_act)
        blocks = []
        for cin, cout in itertools.pairwise(CHANNELS):
            stride = 2 if cin != cout and cout != 64 else 1
            blocks.append(block(layers, cin, cout, stride))
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(CHANNELS[-1], options.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(bn_act(self.bn1, self.conv1(x), None, self.act1))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(input_size=(3, 224, 224), options=StemOptions(method="fp"))
def mobilenet_v1(**kwargs: object) -> nn.Module:
    """MobileNet-V1 1.0: full precision by default (4.23 M parameters, 569 M MACs at 224).

    With a binary method the depthwise and pointwise convs are binary (stem conv and FC stay
    full precision). ``stem_act`` defaults to the block activation (ReLU for fp).
    """
    model = MobileNetV1(StemOptions.of("mobilenet_v1", kwargs))
    kaiming_init_convs(model, mode="fan_out")
    return model
