"""Pieces several model files share: shortcuts, the classifier head and weight initialisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from onebit.errors import UnknownNameError
from onebit.nn import AvgPool2d, ChannelPadShortcut

SHORTCUTS = ("conv", "avgpool_conv", "avgpool", "subsample")


def make_shortcut(cin: int, cout: int, stride: int, mode: str) -> nn.Module | None:
    """The shortcut of a block from ``cin`` to ``cout`` channels at ``stride``; None (identity)
    when the shape does not change. Every conv here is full precision, as in the papers.

    - ``conv``: 1x1 conv (stride s) + BN (He et al.; torchvision, IR-Net, FIRNet ImageNet);
    - ``avgpool_conv``: AvgPool2d(s) + 1x1 conv + BN (Bi-Real, ReActNet, Real-to-Binary);
    - ``avgpool`` / ``subsample``: parameter-free, see :class:`onebit.nn.ChannelPadShortcut`.
    """
    if mode not in SHORTCUTS:
        raise UnknownNameError("shortcut", mode, SHORTCUTS)
    if stride == 1 and cin == cout:
        return None
    if mode == "conv":
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    if mode == "avgpool_conv":
        pool = AvgPool2d(stride) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return ChannelPadShortcut(cin, cout, mode)


def make_stages(
    make_block: Callable[[int, int, int], nn.Module],
    cin: int,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
) -> tuple[list[nn.Sequential], int]:
    """ResNet-style stages: ``depths[i]`` blocks of width ``widths[i]``, stride 2 at the first
    block of every stage but the first. Returns the stages and their output width."""
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for j in range(depth):
            blocks.append(make_block(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width
        stages.append(nn.Sequential(*blocks))
    return stages, cin


class _GradLikeInput(torch.autograd.Function):
    """Identity whose gradient takes its input's memory format (see :func:`grad_like_input`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.format = torch.channels_last if nhwc else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.format)


@torch.fx.wrap
def grad_like_input(x: torch.Tensor) -> torch.Tensor:
    """x, with its gradient in x's memory format. The CPU convolutions of a one-channel
    (Fashion-MNIST) network run channels-last while the pooling head's backward returns NCHW:
    every BatchNorm backward behind it then mixes formats and takes PyTorch's slow path
    (ResNet-20 ReCU: ~10 ms instead of ~0.7 ms per 64x8x8 layer, 239 -> 281 img/s at one
    thread; docs/results.md). Values are untouched."""
    return _GradLikeInput.apply(x) if torch.is_grad_enabled() and x.requires_grad else x


class BNHead(nn.Module):
    """Global average pool, BatchNorm1d, optionally an activation (``act``: IR-Net's 1w32a
    ReLU), full-precision Linear (IR-Net / ReCU CIFAR head)."""

    def __init__(self, channels: int, num_classes: int, act: nn.Module | None = None):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)
        self.act = act if act is not None else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = grad_like_input(x)
        x = self.bn(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return self.fc(self.act(x))


def kaiming_init_convs(model: nn.Module, mode: str = "fan_in") -> None:
    """He-normal init, N(0, 2 / fan), of every conv weight, binary ones included: fan_in as
    the IR-Net / ReCU CIFAR codes, fan_out (k * k * out_channels) as torchvision's ResNet and
    IR-Net's ImageNet normal(0, sqrt(2 / (k * k * out_channels)))."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
