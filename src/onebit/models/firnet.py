"""FIRNet (information retention): half the channels go through the binary conv, half are
kept untouched, then the two are concatenated and channel-shuffled; a fusion layer merges the
two branches before the head. Built on ReCU's quantizers and tau schedule.

Source: Alexrich961210/FIRNet, ``cifar/models_cifar/resnet20.py``, ``resnet18.py`` and
``imagenet/models_imagenet/resnet.py``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from onebit.errors import ConfigError
from onebit.models._common import BNHead, kaiming_init_convs, make_shortcut, make_stages
from onebit.models.registry import StemOptions, register_model
from onebit.models.resnet import ResNet
from onebit.nn import AvgPool2d, BinaryLayers, ChannelShuffle, LearnableBias
from onebit.nn.bn_act import bn_act


class FIRBlock(nn.Module):
    """Two half-blocks over a 2C-channel tensor [active | idle].

    Half-block: active -> binary conv3x3 -> BN -> + shortcut -> act; idle -> LearnableBias;
    concat [out, idle], channel shuffle (groups 2). In the first half of a downsampling block
    the conv has stride 2, the shortcut of the active half is ``downsample`` (see
    ``make_shortcut``: "avgpool" = AvgPool2d(2) + zero channel pad on CIFAR, "conv" = FP 1x1/2
    conv + BN on ImageNet), and the idle path is AvgPool2d(2) of the *whole* input
    (2 C_in = C_out channels).
    """

    def __init__(self, layers: BinaryLayers, cin: int, cout: int, stride: int, downsample: str):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.downsamples = stride != 1 or cin != cout
        if self.downsamples and 2 * cin != cout:
            raise ConfigError(
                f"FIRNet blocks downsample by doubling the width; got {cin} -> {cout} channels"
            )
        self.conv1 = layers.conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = layers.act(cout)
        self.shortcut = make_shortcut(cin, cout, stride, downsample)
        self.idle_pool = AvgPool2d(2) if self.downsamples else None
        self.move0 = LearnableBias(cout)
        self.conv2 = layers.conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = layers.act(cout)
        self.move1 = LearnableBias(cout)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active, idle = x.split([self.cin, self.cin], dim=1)
        residual = active if self.shortcut is None else self.shortcut(active)
        out = bn_act(self.bn1, self.conv1(active), residual, self.act1)
        if self.idle_pool is not None:
            idle = self.idle_pool(x)
        x = self.shuffle.cat([out, self.move0(idle)])
        active, idle = x.split([self.cout, self.cout], dim=1)
        out = bn_act(self.bn2, self.conv2(active), active, self.act2)
        return self.shuffle.cat([out, self.move1(idle)])


class FIRFusion(nn.Module):
    """FIR fusion layer (the official ``DownBlock``), 2C -> C channels:

    out = act(BN(binary conv3x3(x: 2C -> C)) + x[:, :C]).
    With ``half_block=True`` (ResNet-18 variant) one more half-block (as in FIRBlock, stride 1)
    runs first.
    """

    def __init__(self, layers: BinaryLayers, channels: int, half_block: bool):
        super().__init__()
        self.channels = channels
        self.half_block = half_block
        if half_block:
            self.conv1 = layers.conv3x3(channels, channels)
            self.bn1 = nn.BatchNorm2d(channels)
            self.act1 = layers.act(channels)
            self.move0 = LearnableBias(channels)
            self.shuffle = ChannelShuffle(2)
        self.conv = layers.conv3x3(2 * channels, channels)
        self.bn = nn.BatchNorm2d(channels)
        self.act = layers.act(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.half_block:
            active, idle = x.split([self.channels, self.channels], dim=1)
            out = bn_act(self.bn1, self.conv1(active), active, self.act1)
            x = self.shuffle.cat([out, self.move0(idle)])
        return bn_act(self.bn, self.conv(x), x[:, : self.channels], self.act)


class FIRNetCifar(nn.Module):
    """3x3 FP stem + BN + stem activation, output duplicated to 2C; FIR stages; fusion; head."""

    def __init__(
        self,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        options: StemOptions,
        fusion_half_block: bool,
    ):
        super().__init__()
        layers = options.layers()
        self.conv1 = nn.Conv2d(options.in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = layers.act(widths[0], options.stem_act)
        make_block = partial(FIRBlock, layers, downsample="avgpool")
        stages, cin = make_stages(make_block, widths[0], widths, depths)
        self.stages = nn.Sequential(*stages)
        self.fusion = FIRFusion(layers, cin, fusion_half_block)
        self.head = BNHead(cin, options.num_classes)
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = bn_act(self.bn1, self.conv1(x), None, self.act1)
        x = self.stages(torch.cat([x, x], dim=1))
        return self.head(self.fusion(x))


def _create_firnet_cifar(
    variant: str,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    fusion_half_block: bool,
    **kwargs: object,
) -> FIRNetCifar:
    return FIRNetCifar(widths, depths, StemOptions.of(variant, kwargs), fusion_half_block)


@register_model(input_size=(3, 32, 32), options=StemOptions(method="recu", num_classes=10))
def firnet20(**kwargs: object) -> nn.Module:
    """FIRNet ResNet-20 for CIFAR: ResNet-20 widths with split/idle paths and an FIR fusion."""
    return _create_firnet_cifar("firnet20", (16, 32, 64), (3, 3, 3), False, **kwargs)


@register_model(
    input_size=(3, 32, 32), options=StemOptions(method="recu", num_classes=10, stem_act="none")
)
def firnet18_cifar(**kwargs: object) -> nn.Module:
    """FIRNet ResNet-18 for CIFAR: 64-128-256-512 x 2 FIR blocks, half-block + FIR fusion."""
    return _create_firnet_cifar("firnet18_cifar", (64, 128, 256, 512), (2, 2, 2, 2), True, **kwargs)


class FIRNet(ResNet):
    """FIRNet on the ImageNet ResNet trunk: the stem output is duplicated to 2C channels, the
    stages are FIR blocks, and the FIR fusion (2C -> C) runs before the BN1d + FC head."""

    def __init__(self, depths: tuple[int, ...], options: StemOptions):
        layers = options.layers()
        make_block = partial(FIRBlock, layers, downsample="conv")
        super().__init__(make_block, depths, (64, 128, 256, 512), options, head_bn=True)
        self.fusion = FIRFusion(layers, self.num_features, half_block=False)

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(super().forward_stages(torch.cat([x, x], dim=1)))


@register_model(input_size=(3, 224, 224), options=StemOptions(method="recu"))
def firnet18(**kwargs: object) -> nn.Module:
    """FIRNet ResNet-18 for ImageNet: 7x7 stem duplicated to 128 channels, FIR blocks with FP
    1x1 conv shortcuts, FIR fusion 1024 -> 512, BN1d head.

    Initialised as the official code: He-normal (fan_in) convs, every BatchNorm2d weight 1e-8.
    """
    model = FIRNet((2, 2, 2, 2), StemOptions.of("firnet18", kwargs))
    kaiming_init_convs(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1e-8)
    return model
