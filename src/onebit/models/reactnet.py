"""ReActNet: RSign (sign with a learnable threshold) and RPReLU around every binary conv.

ReActNet-18/34 are Bi-Real Nets with the ReActNet method; ReActNet-A is MobileNet-V1 with
every depthwise 3x3 conv replaced by a full binary 3x3 conv and parameter-free shortcuts.
Source: Liu et al. 2020 (ECCV); liuzechun/ReActNet ``resnet/2_step2/birealnet.py`` and
``mobilenet/2_step2/reactnet.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from onebit.models.birealnet import BiRealOptions, _create_birealnet
from onebit.models.mobilenet import MobileNetV1
from onebit.models.registry import StemOptions, register_model
from onebit.nn import BinaryLayers
from onebit.nn.bn_act import bn_act


class ReActBlock(nn.Module):
    """ReActNet-A block, C_in -> C_out in {C_in, 2 C_in}:

        y = act1(bn1(conv3x3(x, stride s)) + (AvgPool2d(2)(x) if s == 2 else x))
        out = act2(bn2(conv1x1(y: C_in -> C_out)) + cat([y] * (C_out / C_in)))

    With the ReActNet method each conv's input goes through RSign (the official ``move11`` /
    ``move21`` biases are the convs' ``act_bias``) and act1, act2 are RPReLU.
    When the width doubles the official code has two 1x1 convs C -> C with their own BN, each
    added to y and concatenated; one 1x1 conv C -> 2C with one BN over 2C channels is the same
    function (its output channels are the two convs' stacked, BN and the weight scale are per
    channel) and shares the one RSign threshold both official convs read.
    """

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv3x3 = layers.conv3x3(cin, cin, stride)
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = layers.act(cin)
        self.pool = nn.AvgPool2d(2) if stride == 2 else None
        self.conv1x1 = layers.conv1x1(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        self.repeats = cout // cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.pool is None else self.pool(x)
        y = bn_act(self.bn1, self.conv3x3(x), shortcut, self.act1)
        return bn_act(self.bn2, self.conv1x1(y), y.repeat(1, self.repeats, 1, 1), self.act2)


class ReActNetA(MobileNetV1):
    """MobileNet-V1's layout with :class:`ReActBlock` blocks: FP 3x3/2 stem conv + BN (+ stem
    act), 13 ReActBlocks, global average pool, FP FC (official ``reactnet``)."""

    def __init__(self, options: StemOptions):
        super().__init__(options, block=ReActBlock)


@register_model(input_size=(3, 224, 224), options=StemOptions(method="reactnet", stem_act="none"))
def reactnet_a(**kwargs: object) -> nn.Module:
    """ReActNet-A: MobileNet-V1 layout, 13 blocks of binary 3x3 + 1x1 convs, widths 32-1024.

    With method="fp" it is the real-valued twin of the same architecture.
    """
    return ReActNetA(StemOptions.of("reactnet_a", kwargs))


@register_model(input_size=(3, 224, 224), options=BiRealOptions(method="reactnet"))
def reactnet18(**kwargs: object) -> nn.Module:
    """ReActNet-18: Bi-Real Net-18 with RSign before and RPReLU after every binary conv."""
    return _create_birealnet("reactnet18", (4, 4, 4, 4), **kwargs)


@register_model(input_size=(3, 224, 224), options=BiRealOptions(method="reactnet"))
def reactnet34(**kwargs: object) -> nn.Module:
    """ReActNet-34: Bi-Real Net-34 with RSign before and RPReLU after every binary conv."""
    return _create_birealnet("reactnet34", (6, 8, 12, 6), **kwargs)
