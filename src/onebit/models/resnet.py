"""ImageNet ResNets: the shared trunk, IR-Net's binary ResNet-18/34 (normal and Bi-Real
structure; XNOR-Net baseline with ``method="xnor"``) and the FP ResNet-18/34/50 teachers.

With ``method="fp"`` the state-dict keys and shapes are those of torchvision's ``resnet18``,
``resnet34`` and ``resnet50`` (v1.5), so torchvision weights load with ``load_state_dict``.
Sources: He et al. 2016; htqin/IR-Net ``ImageNet/ResNet18/1w1a/models/resnet.py`` (Bi-Real
structure) and ``1w32a/models/resnet.py`` (normal structure); torchvision ``resnet.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from onebit.errors import UnknownNameError
from onebit.models._common import kaiming_init_convs, make_shortcut, make_stages
from onebit.models.registry import StemOptions, register_model
from onebit.nn import BinaryLayers
from onebit.nn.bn_act import bn_act

STRUCTURES = ("normal", "bireal")
BlockFactory = Callable[[int, int, int], nn.Module]


class ResNet(nn.Module):
    """The ImageNet ResNet trunk every ResNet-like model here is built on:

    conv1 (7x7/2, full precision) -> bn1 -> act1 (stem activation) -> maxpool (3x3/2) ->
    layer1..layerN (``make_block(cin, cout, stride)``, stride 2 at the first block of
    every layer but the first) -> global average pool -> [bn2: BatchNorm1d, IR-Net / FIRNet
    head] -> fc. Attribute names follow torchvision's ``ResNet``. ``options`` gives the
    input channels, the classes and the stem activation (``stem_act`` of its method's
    layers). ``stem_kernel`` / ``stem_stride`` change the first conv (3, 1: the CIFAR stem of
    BNEW's Bi-Real ResNet-20).
    """

    def __init__(
        self,
        make_block: BlockFactory,
        depths: tuple[int, ...],
        widths: tuple[int, ...],
        options: StemOptions,
        *,
        head_bn: bool = False,
        stem_width: int = 64,
        stem_kernel: int = 7,
        stem_stride: int = 2,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            options.in_chans, stem_width, stem_kernel, stem_stride, stem_kernel // 2, bias=False
        )
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = options.layers().act(stem_width, options.stem_act)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = make_stages(make_block, stem_width, widths, depths)
        for i, stage in enumerate(stages):
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(depths)
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(cin) if head_bn else None
        self.fc = nn.Linear(cin, options.num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(bn_act(self.bn1, self.conv1(x), None, self.act1))

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.bn2 is not None:
            x = self.bn2(x)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stages(self.forward_stem(x)))


class BasicBlock(nn.Module):
    """ResNet basic block with two 3x3 (binary) convs, in one of two structures:

    - ``normal`` (He et al.; IR-Net 1w32a code):
      out = act2(bn2(conv2(act1(bn1(conv1(x))))) + downsample(x));
    - ``bireal`` (Bi-Real structure; IR-Net 1w1a code): a shortcut around every conv,
      y = act1(bn1(conv1(x)) + downsample(x)); out = act2(bn2(conv2(y)) + y).
    """

    def __init__(
        self,
        layers: BinaryLayers,
        cin: int,
        cout: int,
        stride: int,
        structure: str,
        downsample: str,
    ):
        super().__init__()
        if structure not in STRUCTURES:
            raise UnknownNameError("structure", structure, STRUCTURES)
        self.structure = structure
        self.conv1 = layers.conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.act(cout)
        self.conv2 = layers.conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        self.downsample = make_shortcut(cin, cout, stride, downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.structure == "bireal":
            y = bn_act(self.bn1, self.conv1(x), shortcut, self.act1)
            return bn_act(self.bn2, self.conv2(y), y, self.act2)
        y = bn_act(self.bn1, self.conv1(x), None, self.act1)
        return bn_act(self.bn2, self.conv2(y), shortcut, self.act2)


class Bottleneck(nn.Module):
    """ResNet-50 v1.5 bottleneck (torchvision): 1x1 (C/4) -> 3x3 (C/4, stride) -> 1x1 (C),
    each conv followed by BN; out = act3(bn3(conv3(.)) + downsample(x))."""

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int, downsample: str):
        super().__init__()
        mid = cout // 4
        self.conv1 = layers.conv1x1(cin, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = layers.act(mid)
        self.conv2 = layers.conv3x3(mid, mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = layers.act(mid)
        self.conv3 = layers.conv1x1(mid, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act3 = layers.act(cout)
        self.downsample = make_shortcut(cin, cout, stride, downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = bn_act(self.bn1, self.conv1(x), None, self.act1)
        y = bn_act(self.bn2, self.conv2(y), None, self.act2)
        return bn_act(self.bn3, self.conv3(y), shortcut, self.act3)


@dataclass(frozen=True)
class ResNetOptions(StemOptions):
    """Options of the ImageNet ResNets: ``head_bn`` (BatchNorm1d before the FC; None: on for
    binary methods, off for fp) and ``downsample`` ("conv" or "avgpool_conv")."""

    method: str = "irnet"
    head_bn: bool | None = None
    downsample: str = "conv"


@dataclass(frozen=True)
class BasicResNetOptions(ResNetOptions):
    """:class:`ResNetOptions` of the basic-block ResNets, plus ``structure`` ("normal" or
    "bireal", see :class:`BasicBlock`)."""

    structure: str = "normal"


def _create_resnet(
    variant: str, depths: tuple[int, ...], bottleneck: bool = False, **kwargs: object
) -> ResNet:
    o = ResNetOptions.of(variant, kwargs)
    layers = o.layers()
    if bottleneck:
        widths = (256, 512, 1024, 2048)
        make_block = partial(Bottleneck, layers, downsample=o.downsample)
    else:
        assert isinstance(o, BasicResNetOptions)
        widths = (64, 128, 256, 512)
        make_block = partial(BasicBlock, layers, structure=o.structure, downsample=o.downsample)
    head_bn = not layers.is_fp if o.head_bn is None else o.head_bn
    model = ResNet(make_block, depths, widths, o, head_bn=head_bn)
    kaiming_init_convs(model, mode="fan_out")
    return model


@register_model(input_size=(3, 224, 224), options=BasicResNetOptions())
def resnet18(**kwargs: object) -> nn.Module:
    """ResNet-18 (ImageNet): IR-Net binary by default, torchvision-compatible with method="fp".

    ``structure``: "normal" (two convs per shortcut) or "bireal" (a shortcut around every
    conv, the structure of IR-Net's published 1w1a result). ``stem_act`` defaults to the block
    activation (hardtanh for IR-Net, ReLU for fp). ``head_bn`` (BatchNorm1d before the FC, as
    in IR-Net's code) defaults to on for binary models, off for fp. ``downsample``: "conv"
    (1x1/2 conv + BN) or "avgpool_conv" (Bi-Real's AvgPool2d + 1x1 conv + BN).
    """
    return _create_resnet("resnet18", (2, 2, 2, 2), **kwargs)


@register_model(input_size=(3, 224, 224), options=BasicResNetOptions())
def resnet34(**kwargs: object) -> nn.Module:
    """ResNet-34 (ImageNet): IR-Net binary by default, torchvision-compatible with method="fp".

    Options as :func:`resnet18`; stages of 3, 4, 6, 3 basic blocks.
    """
    return _create_resnet("resnet34", (3, 4, 6, 3), **kwargs)


@register_model(input_size=(3, 224, 224), options=ResNetOptions(method="fp"))
def resnet50(**kwargs: object) -> nn.Module:
    """ResNet-50 v1.5 (ImageNet), full precision by default (a teacher); torchvision's keys.

    With a binary method every 1x1 and 3x3 conv of the bottlenecks is binary (first conv,
    downsampling shortcuts and FC stay full precision). Options as :func:`resnet18`.
    """
    return _create_resnet("resnet50", (3, 4, 6, 3), bottleneck=True, **kwargs)
