"""CIFAR-scale ResNets of the IR-Net and ReCU papers: ResNet-20 and ResNet-18 (3x3 stem)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from onebit.models._common import BNHead, kaiming_init_convs, make_stages
from onebit.models.registry import register_model
from onebit.models.resnet import BasicBlock
from onebit.nn import BinaryLayers, make_activation


class CifarResNet(nn.Module):
    """3x3 stem conv (full precision) + BN + stem activation, stages, BN head (with
    ``head_act`` between its BatchNorm1d and Linear)."""

    def __init__(
        self,
        make_block: Callable[[int, int, int], nn.Module],
        layers: BinaryLayers,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int,
        in_chans: int,
        stem_act: str | None,
        head_act: str | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = layers.act(widths[0], stem_act)
        stages, cin = make_stages(make_block, widths[0], widths, depths)
        self.stages = nn.Sequential(*stages)
        self.head = BNHead(cin, num_classes, make_activation(head_act, cin) if head_act else None)
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
    structure: str = "bireal",
    head_act: str | None = None,
) -> nn.Module:
    """ResNet-20 for CIFAR (IR-Net / ReCU): 16-32-64 x 3 blocks, a shortcut around every conv.

    ``downsample``: "subsample" (IR-Net option A, default for irnet) or "avgpool" (ReCU,
    default otherwise). ``stem_act`` defaults to the block activation (hardtanh for IR-Net).
    ``structure="normal"`` with ``block_act="relu"``, ``stem_act="none"`` and
    ``head_act="relu"`` is IR-Net's 1w32a network (``BasicBlock_1w32a``: one shortcut per
    block, ReLU; BN1d -> ReLU -> Linear head). About 0.27 M parameters.
    """
    layers = BinaryLayers.of(method, bits, block_act)
    downsample = downsample or ("subsample" if method == "irnet" else "avgpool")
    # IR-Net / ReCU CIFAR BasicBlock_1w1a: a shortcut around every conv (the Bi-Real structure)
    return CifarResNet(
        lambda cin, cout, stride: BasicBlock(layers, cin, cout, stride, structure, downsample),
        layers,
        (16, 32, 64),
        (3, 3, 3),
        num_classes,
        in_chans,
        stem_act,
        head_act,
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
    # IR-Net CIFAR ResNet-18: the standard block with a full-precision 1x1 conv + BN shortcut
    return CifarResNet(
        lambda cin, cout, stride: BasicBlock(layers, cin, cout, stride, "normal", "conv"),
        layers,
        (64, 128, 256, 512),
        (2, 2, 2, 2),
        num_classes,
        in_chans,
        stem_act,
    )
