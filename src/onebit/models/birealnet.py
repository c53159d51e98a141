"""Bi-Real Net 18/34/50: one binary conv per shortcut, so the real-valued activations
flow through every block; downsampling shortcut = AvgPool2d(2) + FP 1x1 conv + BN.

Source: Liu et al. 2018 (ECCV) / 2020 (IJCV); liuzechun/Bi-Real-net
``pytorch_implementation/BiReal18_34/birealnet.py`` and ``BiReal_50/birealnet.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from onebit.models._common import make_shortcut
from onebit.models.registry import StemOptions, register_model
from onebit.models.resnet import ResNet
from onebit.nn import BinaryLayers, LeakyClip, make_activation
from onebit.nn.bn_act import bn_act


def bireal_init(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a binary conv's latent weight as the official ``HardBinaryConv``:
    U[0, 0.001), so every weight sign is +1 at step 0 (Bi-Real 18/34/50, ReActNet-18/34)."""
    nn.init.uniform_(conv.weight, 0.0, 1e-3)
    return conv


class BiRealBlock(nn.Module):
    """out = act(bn(conv3x3(x)) + downsample(x)): one binary 3x3 conv with its own shortcut.

    The block activation is the method's (identity for Bi-Real, RPReLU for ReActNet-18/34).
    The conv starts at U[0, 0.001) (:func:`bireal_init`; ``uniform_init=False``: PyTorch's
    init, as BNEW's CIFAR net); the other layers at PyTorch's init.
    Source: Bi-Real ``BasicBlock``; ReActNet ``resnet/2_step2/birealnet.py``.
    """

    def __init__(
        self,
        layers: BinaryLayers,
        cin: int,
        cout: int,
        stride: int,
        downsample: str,
        uniform_init: bool = True,
        input_act: str | None = None,
    ):
        super().__init__()
        # the real-valued pre-training of Bi-Real's Caffe recipe puts its nonlinearity (ReLU,
        # leaky-clip, clip) where the binary network has its sign: on the conv input only
        self.input_act = make_activation(input_act or "identity", cin)
        self.conv = layers.conv3x3(cin, cout, stride)
        if uniform_init:
            bireal_init(self.conv)
        self.bn = nn.BatchNorm2d(cout)
        self.act = layers.act(cout)
        self.downsample = make_shortcut(cin, cout, stride, downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return bn_act(self.bn, self.conv(self.input_act(x)), shortcut, self.act)


class BiRealBottleneck(nn.Module):
    """Bi-Real-50's bottleneck: 1x1 (C/4) -> 3x3 (C/4, stride) -> 1x1 (C), a shortcut around
    every conv. It carries two tensors: ``mid`` (C/4 channels, the previous 3x3 output) and
    ``x`` (C channels, the block output):

        y1 = act1(bn1(conv1(x)) + proj(mid))        proj = FP 1x1 C_in/4 -> C/4 when widening
        y2 = act2(bn2(conv2(y1)) + pool(y1))        pool = AvgPool2d(2) when stride is 2
        y3 = act3(bn3(conv3(y2)) + downsample(x))   downsample = AvgPool2d + FP 1x1 + BN
        return (y2, y3)

    In the first block of the network conv1 is full precision, fed through LeakyClip instead
    of a sign, and y1 has no shortcut (the official ``is_first_block``).
    """

    def __init__(
        self,
        layers: BinaryLayers,
        cin: int,
        cout: int,
        stride: int,
        first: bool,
    ):
        super().__init__()
        mid = cout // 4
        self.first = first
        self.clip = LeakyClip() if first else None
        self.conv1 = (
            nn.Conv2d(cin, mid, 1, bias=False) if first else bireal_init(layers.conv1x1(cin, mid))
        )
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = layers.act(mid)
        widen = cin != cout
        self.proj = nn.Conv2d(cin // 4, mid, 1, bias=False) if widen and not first else None
        self.conv2 = bireal_init(layers.conv3x3(mid, mid, stride))
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = layers.act(mid)
        self.pool = nn.AvgPool2d(2) if stride == 2 else None
        self.conv3 = bireal_init(layers.conv1x1(mid, cout))
        self.bn3 = nn.BatchNorm2d(cout)
        self.act3 = layers.act(cout)
        self.downsample = make_shortcut(cin, cout, stride, "avgpool_conv")

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        mid, x = state
        if self.first:
            y1 = bn_act(self.bn1, self.conv1(self.clip(x)), None, self.act1)
        else:
            y1 = bn_act(
                self.bn1, self.conv1(x), mid if self.proj is None else self.proj(mid), self.act1
            )
        y2 = bn_act(self.bn2, self.conv2(y1), y1 if self.pool is None else self.pool(y1), self.act2)
        shortcut = x if self.downsample is None else self.downsample(x)
        return y2, bn_act(self.bn3, self.conv3(y2), shortcut, self.act3)


class BiRealNet50(ResNet):
    """ResNet trunk whose stages pass (mid, x) pairs through :class:`BiRealBottleneck`."""

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_stages((x, x))[1]


@dataclass(frozen=True)
class BiRealOptions(StemOptions):
    """Options of the Bi-Real-structured ImageNet ResNets (Bi-Real Net-18/34, ReActNet-18/34):
    ``downsample``, "avgpool_conv" (the paper's AvgPool2d + FP 1x1 conv + BN) or "conv"."""

    method: str = "bireal"
    stem_act: str | None = "none"
    downsample: str = "avgpool_conv"


@dataclass(frozen=True)
class BiRealNetOptions(BiRealOptions):
    """:class:`BiRealOptions` of Bi-Real Net-18/34, plus ``input_act`` (see
    :class:`BiRealBlock`)."""

    input_act: str | None = None


def _create_birealnet(variant: str, depths: tuple[int, ...], **kwargs: object) -> ResNet:
    """A Bi-Real-structured ResNet (``depths`` one-conv blocks per stage); also ReActNet-18/34
    (which take no ``input_act``)."""
    o = BiRealOptions.of(variant, kwargs)
    layers = o.layers()
    input_act = o.input_act if isinstance(o, BiRealNetOptions) else None
    make_block = partial(BiRealBlock, layers, downsample=o.downsample, input_act=input_act)
    return ResNet(make_block, depths, (64, 128, 256, 512), o)


@register_model(input_size=(3, 224, 224), options=BiRealNetOptions())
def birealnet18(**kwargs: object) -> nn.Module:
    """Bi-Real Net-18: 16 binary 3x3 convs, each with its own shortcut; 7x7 stem + BN, no act.

    ``downsample``: "avgpool_conv" (the paper's AvgPool2d + FP 1x1 conv + BN) or "conv".
    ``input_act``: an activation on every binary conv's input, for the real-valued
    pre-training of the Caffe recipe (relu, leakyclip, hardtanh; ``bits: 32w32a``).
    """
    return _create_birealnet("birealnet18", (4, 4, 4, 4), **kwargs)


@register_model(input_size=(3, 224, 224), options=BiRealNetOptions())
def birealnet34(**kwargs: object) -> nn.Module:
    """Bi-Real Net-34: 32 binary 3x3 convs (stages 6, 8, 12, 6), each with its own shortcut."""
    return _create_birealnet("birealnet34", (6, 8, 12, 6), **kwargs)


@register_model(input_size=(3, 224, 224), options=StemOptions(method="bireal", stem_act="none"))
def birealnet50(**kwargs: object) -> nn.Module:
    """Bi-Real Net-50: ResNet-50 bottlenecks with a shortcut around each of the three convs."""
    o = StemOptions.of("birealnet50", kwargs)
    layers = o.layers()

    def make_block(cin: int, cout: int, stride: int) -> nn.Module:
        return BiRealBottleneck(layers, cin, cout, stride, first=cin == 64)

    return BiRealNet50(make_block, (3, 4, 6, 3), (256, 512, 1024, 2048), o)


def _create_bnew_cifar(variant: str, depths: tuple[int, ...], **kwargs: object) -> ResNet:
    """BNEW's CIFAR Bi-Real ResNet: 3x3 stem + BN + max-pool, stages of ``depths`` one-conv
    blocks (:class:`BiRealBlock`, PyTorch's default conv init) of 16-32-64 channels,
    AvgPool2d(2) + FP 1x1 conv + BN downsampling, average pool + FC.
    Source: Alasdair-P/bnew ``models/ste_wide_resnet.py`` (``BiRealNet``)."""
    o = StemOptions.of(variant, kwargs)
    layers = o.layers()
    return ResNet(
        partial(BiRealBlock, layers, downsample="avgpool_conv", uniform_init=False),
        depths,
        (16, 32, 64),
        o,
        stem_width=16,
        stem_kernel=3,
        stem_stride=1,
    )


BNEW_CIFAR_OPTIONS = StemOptions(method="bnew", num_classes=10, stem_act="none")


@register_model(input_size=(3, 32, 32), options=BNEW_CIFAR_OPTIONS)
def birealnet20(**kwargs: object) -> nn.Module:
    """Bi-Real ResNet-20 for CIFAR (BNEW's ``brn``): 3 x 6 one-conv blocks of 16-32-64.

    With the default method ``bnew`` each block is RSign -> binary 3x3 conv -> learnable
    scale -> BN -> + shortcut -> RPReLU (see :func:`_create_bnew_cifar`); 0.28 M parameters.
    """
    return _create_bnew_cifar("birealnet20", (6, 6, 6), **kwargs)


@register_model(input_size=(3, 32, 32), options=BNEW_CIFAR_OPTIONS)
def birealnet8(**kwargs: object) -> nn.Module:
    """Bi-Real ResNet-8 for CIFAR (BNEW's small ``blrn``): 3 x 2 one-conv blocks of 16-32-64."""
    return _create_bnew_cifar("birealnet8", (2, 2, 2), **kwargs)
