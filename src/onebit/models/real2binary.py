"""Real-to-Binary Net (ResNet-18): the strong baseline and, with ``gate=True``, the
data-driven channel re-scaling of the full Real-to-Binary network.

Source: Martinez et al. 2020 (ICLR), "Training binary neural networks with real-to-binary
convolutions"; no official PyTorch code, the authors point to larq/zoo
``larq_zoo/literature/real_to_bin_nets.py`` (``StrongBaselineNetFactory``,
``RealToBinNetFactory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from onebit.models._common import make_shortcut
from onebit.models.registry import StemOptions, register_model
from onebit.models.resnet import ResNet
from onebit.nn import BinaryLayers, ChannelGate, LearnedRescale


class HalfBlock(nn.Module):
    """One binary conv with its shortcut (a "half block" of Real-to-Binary):

        out = act(scale(conv3x3(bn(x)))) + downsample(x)

    ``scale`` is the learned rescale s_h x s_w x s_c (strong baseline) or, with ``gate``,
    the data-driven gate sigmoid(W2 relu(W1 GAP(bn(x)))) computed from the conv's real input.
    The activation (PReLU for the method) comes before the shortcut sum, as in larq/zoo.
    """

    def __init__(
        self,
        layers: BinaryLayers,
        cin: int,
        cout: int,
        stride: int,
        out_hw: int,
        gate: bool,
        downsample: str = "avgpool_conv",
    ):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = layers.conv3x3(cin, cout, stride)
        self.gate = ChannelGate(cin, cout) if gate else None
        self.rescale = None if gate else LearnedRescale(cout, out_hw, out_hw)
        self.act = layers.act(cout)
        self.downsample = make_shortcut(cin, cout, stride, downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = self.bn(x)
        out = self.conv(real)
        out = out * self.gate(real) if self.gate is not None else self.rescale(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(out) + shortcut


class Real2BinaryBlock(nn.Sequential):
    """Two half blocks (the block whose output attention transfer matches to the teacher's)."""


def _stage_hw(input_hw: int) -> dict[int, int]:
    """Feature-map side length of each stage width for an ``input_hw`` input: the 7x7/2 stem
    conv and the 3x3/2 max-pool each take ceil(h / 2), then each stage halves it."""
    hw = (((input_hw - 1) // 2 + 1) - 1) // 2 + 1
    sizes = {}
    for width in (64, 128, 256, 512):
        sizes[width] = hw
        hw = (hw - 1) // 2 + 1
    return sizes


@dataclass(frozen=True)
class Real2BinaryOptions(StemOptions):
    """Options of :func:`real2binary18`: ``gate``, ``input_hw``, ``downsample``."""

    method: str = "real2binary"
    stem_act: str | None = "prelu"
    gate: bool = False
    input_hw: int = 224
    downsample: str = "avgpool_conv"


@register_model(input_size=(3, 224, 224), options=Real2BinaryOptions())
def real2binary18(**kwargs: object) -> nn.Module:
    """Real-to-Binary ResNet-18: the strong baseline; ``gate=True`` for the full Real-to-Binary.

    8 blocks of two half blocks (BN -> binary 3x3 -> scale -> PReLU, + shortcut), widths
    64-128-256-512; 7x7 stem + BN + PReLU + max-pool. ``input_hw`` is the input side length
    the learned rescale is sized for. With ``gate=True`` there are 11,995,624 values
    (BN running statistics included), as larq/zoo's ``RealToBinaryNet``. ``downsample``:
    "avgpool_conv" (larq/zoo: AvgPool2d + 1x1 conv + BN) or "conv" (the mmcls zoo: a stride-2
    1x1 conv + BN).
    """
    o = Real2BinaryOptions.of("real2binary18", kwargs)
    layers = o.layers()
    sizes = _stage_hw(o.input_hw)

    def make_block(cin: int, cout: int, stride: int) -> nn.Module:
        half = partial(HalfBlock, layers, out_hw=sizes[cout], gate=o.gate, downsample=o.downsample)
        return Real2BinaryBlock(half(cin, cout, stride), half(cout, cout, 1))

    model = ResNet(make_block, (2, 2, 2, 2), (64, 128, 256, 512), o)
    init_like_keras(model)
    return model


def init_like_keras(model: nn.Module) -> None:
    """larq/zoo's initialisation, in PyTorch terms: convs Glorot-normal, gate Dense layers
    He-normal (both with the variance of Keras' truncated normals, untruncated), the FC
    Glorot-uniform with zero bias, PReLU slopes 0; BatchNorm with Keras' momentum 0.99
    (PyTorch momentum 0.01) and epsilon 1e-3."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, ChannelGate):
            nn.init.kaiming_normal_(m.reduce.weight)
            nn.init.kaiming_normal_(m.expand.weight)
        elif isinstance(m, nn.PReLU):
            nn.init.zeros_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = 0.01, 1e-3
    nn.init.xavier_uniform_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
