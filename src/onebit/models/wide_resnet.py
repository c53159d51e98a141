"""Wide ResNets for CIFAR (pre-activation): BNEW's full-precision teacher WRN-22-1.

Source: Zagoruyko & Komodakis 2016; Alasdair-P/bnew ``models/wide_resnet.py`` (from
xternalz/WideResNet-pytorch), the ``rn`` model of BNEW's ``teachers.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from onebit.models._common import make_stages
from onebit.models.registry import ModelOptions, register_model
from onebit.nn import BinaryLayers
from onebit.nn.bn_act import bn_act


class PreActBlock(nn.Module):
    """Pre-activation basic block:

        y = act1(bn1(x)); out = conv2(act2(bn2(conv1(y)))) + shortcut

    shortcut = x when the shape is kept, else a 1x1 (stride s) conv of y (the official code
    feeds the activated input to both branches when the width changes).
    """

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = layers.act(cin)
        self.conv1 = layers.conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        self.conv2 = layers.conv3x3(cout, cout)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bn_act(self.bn1, x, None, self.act1)
        out = self.conv2(bn_act(self.bn2, self.conv1(y), None, self.act2))
        return out + (x if self.shortcut is None else self.shortcut(y))


@dataclass(frozen=True)
class WideResNetOptions(ModelOptions):
    """Options of the Wide ResNets: ``widen_factor`` k."""

    method: str = "fp"
    num_classes: int = 10
    widen_factor: int = 1


class WideResNet(nn.Module):
    """3x3 stem conv, three stages of pre-activation blocks (16k, 32k, 64k channels),
    BN + activation, global average pool, FC."""

    def __init__(self, depth: int, options: WideResNetOptions):
        super().__init__()
        layers = options.layers()
        blocks_per_stage = (depth - 4) // 6
        widen = options.widen_factor
        self.conv1 = nn.Conv2d(options.in_chans, 16, 3, 1, 1, bias=False)
        stages, cin = make_stages(
            partial(PreActBlock, layers),
            16,
            (16 * widen, 32 * widen, 64 * widen),
            (blocks_per_stage,) * 3,
        )
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.act = layers.act(cin)
        self.fc = nn.Linear(cin, options.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # normal(0, sqrt(2 / (k * k * out_channels)))
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = bn_act(self.bn, self.stages(self.conv1(x)), None, self.act)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _create_wide_resnet(variant: str, depth: int, **kwargs: object) -> WideResNet:
    return WideResNet(depth, WideResNetOptions.of(variant, kwargs))


@register_model(input_size=(3, 32, 32), options=WideResNetOptions())
def wrn22(**kwargs: object) -> nn.Module:
    """Wide ResNet-22 for CIFAR (pre-activation, 3 x 3 blocks of 16k-32k-64k): BNEW's teacher.

    ``widen_factor`` k (1: WRN-22-1, 0.27 M parameters, BNEW's ``rn``). The default method is
    ``fp`` (ReLU, nothing binary); another method binarizes every conv but the stem and the
    shortcuts.
    """
    return _create_wide_resnet("wrn22", 22, **kwargs)


@register_model(input_size=(3, 32, 32), options=WideResNetOptions())
def wrn10(**kwargs: object) -> nn.Module:
    """Wide ResNet-10 for CIFAR (3 x 1 pre-activation blocks): BNEW's small teacher ``lrn``."""
    return _create_wide_resnet("wrn10", 10, **kwargs)
