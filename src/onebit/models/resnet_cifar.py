"""CIFAR-scale ResNets of the IR-Net and ReCU papers: ResNet-20 and ResNet-18 (3x3 stem)."""

from __future__ import annotations

import torch
import torch.nn as nn

from onebit.models._common import BNHead, kaiming_init_convs
from onebit.models.registry import register_model
from onebit.nn import BinaryLayers, ChannelPadShortcut


class DoubleShortcutBlock(nn.Module):
    """Two 3x3 convs, each wrapped by its own shortcut (the Bi-Real structure):

    y = act(BN(conv1(x)) + shortcut(x)); out = act(BN(conv2(y)) + y).
    The downsampling shortcut is parameter-free (see ChannelPadShortcut).
    Source: IR-Net / ReCU official CIFAR ``BasicBlock_1w1a``.
    """

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int, downsample: str):
        super().__init__()
        self.conv1 = layers.conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.act(cout)
        self.conv2 = layers.conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        needs_shortcut = stride != 1 or cin != cout
        self.shortcut = ChannelPadShortcut(cin, cout, downsample) if needs_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        y = self.act1(self.bn1(self.conv1(x)) + residual)
        return self.act2(self.bn2(self.conv2(y)) + y)


class BasicBlock(nn.Module):
    """The standard ResNet basic block with a full-precision 1x1 conv + BN shortcut:

    out = act(BN(conv2(act(BN(conv1(x))))) + shortcut(x)).
    Source: IR-Net official CIFAR ResNet-18.
    """

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = layers.conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.act(cout)
        self.conv2 = layers.conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + residual)


class CifarResNet(nn.Module):
    """3x3 stem conv (full precision) + BN + stem activation, stages, BN head."""

    def __init__(
        self,
        layers: BinaryLayers,
        make_block,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int,
        in_chans: int,
        stem_act: str,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = layers.act(widths[0], stem_act)
        stages, cin = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(make_block(cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = BNHead(cin, num_classes)
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.act1(self.bn1(self.conv1(x)))))


@register_model(input_size=(3, 32, 32))
def resnet20(
    *,
    method: str = "irnet",
    bits: str = "1w1a",
    num_classes: int = 10,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = None,
    downsample: str | None = None,
) -> nn.Module:
    """ResNet-20 for CIFAR (IR-Net / ReCU): 16-32-64 x 3 blocks, a shortcut around every conv.

    ``downsample``: "subsample" (IR-Net option A, default for irnet) or "avgpool" (ReCU,
    default otherwise). ``stem_act`` defaults to the block activation (hardtanh for IR-Net).
    About 0.27 M parameters.
    """
    layers = BinaryLayers.of(method, bits, block_act)
    downsample = downsample or ("subsample" if method == "irnet" else "avgpool")
    return CifarResNet(
        layers,
        lambda cin, cout, stride: DoubleShortcutBlock(layers, cin, cout, stride, downsample),
        (16, 32, 64),
        (3, 3, 3),
        num_classes,
        in_chans,
        stem_act,
    )


@register_model(input_size=(3, 32, 32))
def resnet18_cifar(
    *,
    method: str = "irnet",
    bits: str = "1w1a",
    num_classes: int = 10,
    in_chans: int = 3,
    block_act: str | None = None,
    stem_act: str | None = "none",
) -> nn.Module:
    """ResNet-18 for CIFAR (IR-Net): 3x3 stem, 64-128-256-512 x 2 basic blocks, FP 1x1 shortcut.

    The stem has no activation in the official code (``stem_act="none"``). About 11.2 M params.
    """
    layers = BinaryLayers.of(method, bits, block_act)
    return CifarResNet(
        layers,
        lambda cin, cout, stride: BasicBlock(layers, cin, cout, stride),
        (64, 128, 256, 512),
        (2, 2, 2, 2),
        num_classes,
        in_chans,
        stem_act,
    )
