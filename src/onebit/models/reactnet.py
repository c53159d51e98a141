"""ReActNet: RSign (sign with a learnable threshold) and RPReLU around every binary conv.

ReActNet-18/34 are Bi-Real Nets with the ReActNet method; ReActNet-A is MobileNet-V1 with
every depthwise 3x3 conv replaced by a full binary 3x3 conv and parameter-free shortcuts.
Source: Liu et al. 2020 (ECCV); liuzechun/ReActNet ``resnet/2_step2/birealnet.py`` and
``mobilenet/2_step2/reactnet.py``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from onebit.models.birealnet import birealnet
from onebit.models.registry import register_model
from onebit.nn import BinaryLayers

# Output channels of the stem and of the 13 blocks (official ``stage_out_channel``).
REACTNET_A_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


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
        y = self.act1(self.bn1(self.conv3x3(x)) + shortcut)
        return self.act2(self.bn2(self.conv1x1(y)) + y.repeat(1, self.repeats, 1, 1))


class ReActNetA(nn.Module):
    """FP 3x3/2 stem conv + BN (+ stem act), 13 ReActBlocks, global average pool, FP FC.

    Stride 2 where the width changes, except 32 -> 64 (official ``reactnet``).
    """

    def __init__(
        self,
        layers: BinaryLayers,
        num_classes: int,
        in_chans: int,
        stem_act: str | None,
    ):
        super().__init__()
        channels = REACTNET_A_CHANNELS
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = layers.act(channels[0], stem_act)
        blocks = []
        for cin, cout in itertools.pairwise(channels):
            stride = 2 if cin != cout and cout != 64 else 1
            blocks.append(ReActBlock(layers, cin, cout, stride))
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(input_size=(3, 224, 224))
def reactnet_a(
    *,
    method: str = "reactnet",
    bits: str = "1w1a",
    num_classes: int = 1000,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = "none",
) -> nn.Module:
    """ReActNet-A: MobileNet-V1 layout, 13 blocks of binary 3x3 + 1x1 convs, widths 32-1024.

    With method="fp" it is the real-valued twin of the same architecture.
    """
    return ReActNetA(BinaryLayers.of(method, bits, block_act), num_classes, in_chans, stem_act)


@register_model(input_size=(3, 224, 224))
def reactnet18(
    *,
    method: str = "reactnet",
    bits: str = "1w1a",
    num_classes: int = 1000,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = "none",
    downsample: str = "avgpool_conv",
) -> nn.Module:
    """ReActNet-18: Bi-Real Net-18 with RSign before and RPReLU after every binary conv."""
    return birealnet(
        (4, 4, 4, 4),
        method=method,
        bits=bits,
        num_classes=num_classes,
        in_chans=in_chans,
        block_act=block_act,
        stem_act=stem_act,
        downsample=downsample,
    )


@register_model(input_size=(3, 224, 224))
def reactnet34(
    *,
    method: str = "reactnet",
    bits: str = "1w1a",
    num_classes: int = 1000,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = "none",
    downsample: str = "avgpool_conv",
) -> nn.Module:
    """ReActNet-34: Bi-Real Net-34 with RSign before and RPReLU after every binary conv."""
    return birealnet(
        (6, 8, 12, 6),
        method=method,
        bits=bits,
        num_classes=num_classes,
        in_chans=in_chans,
        block_act=block_act,
        stem_act=stem_act,
        downsample=downsample,
    )
