"""CIFAR-scale ResNets of the IR-Net and ReCU papers: ResNet-20 and ResNet-18 (3x3 stem)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from onebit.models._common import BNHead, kaiming_init_convs, make_stages
from onebit.models.registry import StemOptions, register_model
from onebit.models.resnet import BasicBlock
from onebit.nn import make_activation
from onebit.nn.bn_act import bn_act


class CifarResNet(nn.Module):
    """3x3 stem conv (full precision) + BN + stem activation, stages, BN head (with
    ``head_act`` between its BatchNorm1d and Linear). ``options`` gives the input channels,
    the classes and the stem activation."""

    def __init__(
        self,
        make_block: Callable[[int, int, int], nn.Module],
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        options: StemOptions,
        head_act: str | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(options.in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = options.layers().act(widths[0], options.stem_act)
        stages, cin = make_stages(make_block, widths[0], widths, depths)
        self.stages = nn.Sequential(*stages)
        head_act_layer = make_activation(head_act, cin) if head_act else None
        self.head = BNHead(cin, options.num_classes, head_act_layer)
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(bn_act(self.bn1, self.conv1(x), None, self.act1)))


@dataclass(frozen=True)
class ResNet20Options(StemOptions):
    """Options of :func:`resnet20`: ``downsample`` (None: the method's), ``structure``,
    ``head_act``."""

    method: str = "irnet"
    num_classes: int = 10
    downsample: str | None = None
    structure: str = "bireal"
    head_act: str | None = None


@register_model(input_size=(3, 32, 32), options=ResNet20Options())
def resnet20(**kwargs: object) -> nn.Module:
    """ResNet-20 for CIFAR (IR-Net / ReCU): 16-32-64 x 3 blocks, a shortcut around every conv.

    ``downsample``: "subsample" (IR-Net option A, default for irnet) or "avgpool" (ReCU,
    default otherwise). ``stem_act`` defaults to the block activation (hardtanh for IR-Net).
    ``structure="normal"`` with ``block_act="relu"``, ``stem_act="none"`` and
    ``head_act="relu"`` is IR-Net's 1w32a network (``BasicBlock_1w32a``: one shortcut per
    block, ReLU; BN1d -> ReLU -> Linear head). About 0.27 M parameters.
    """
    o = ResNet20Options.of("resnet20", kwargs)
    downsample = o.downsample or ("subsample" if o.method == "irnet" else "avgpool")
    # IR-Net / ReCU CIFAR BasicBlock_1w1a: a shortcut around every conv (the Bi-Real structure)
    make_block = partial(BasicBlock, o.layers(), structure=o.structure, downsample=downsample)
    return CifarResNet(make_block, (16, 32, 64), (3, 3, 3), o, o.head_act)


@register_model(
    input_size=(3, 32, 32), options=StemOptions(method="irnet", num_classes=10, stem_act="none")
)
def resnet18_cifar(**kwargs: object) -> nn.Module:
    """ResNet-18 for CIFAR (IR-Net): 3x3 stem, 64-128-256-512 x 2 basic blocks, FP 1x1 shortcut.

    The stem has no activation in the official code (``stem_act="none"``). About 11.2 M params.
    """
    o = StemOptions.of("resnet18_cifar", kwargs)
    # IR-Net CIFAR ResNet-18: the standard block with a full-precision 1x1 conv + BN shortcut
    make_block = partial(BasicBlock, o.layers(), structure="normal", downsample="conv")
    return CifarResNet(make_block, (64, 128, 256, 512), (2, 2, 2, 2), o)
