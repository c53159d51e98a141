"""Small building blocks of BNN architectures: shifts, RPReLU, channel shuffle, activations."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from onebit.errors import UnknownNameError


class LearnableBias(nn.Module):
    """x + b_c: a learnable per-channel shift, initialised to 0.

    Source: Liu et al. 2020 (ReActNet), official ``LearnableBias``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, PReLU (slope init 0.25), shift: +b1_c -> PReLU -> +b2_c.

    Source: Liu et al. 2020 (ReActNet), official ``move12 -> prelu1 -> move13``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups: (N, g*c, H, W) -> view (N, g, c) -> transpose.

    Source: Zhang et al. 2018 (ShuffleNet); used by FIRNet with groups = 2.
    """

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ChannelPadShortcut(nn.Module):
    """Parameter-free downsampling shortcut: halve H, W then zero-pad the channels.

    ``mode="avgpool"``: AvgPool2d(2) (ReCU / FIRNet); ``mode="subsample"``: x[:, :, ::2, ::2]
    (option A of He et al., IR-Net's CIFAR ResNet-20). Channels go from ``in_channels`` to
    ``out_channels`` with the zeros split evenly before and after.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "avgpool"):
        super().__init__()
        if mode not in ("avgpool", "subsample"):
            raise UnknownNameError("shortcut mode", mode, ("avgpool", "subsample"))
        self.mode = mode
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2) if self.mode == "avgpool" else x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, pad={self.pad}"


ACTIVATION_LAYERS = {
    "hardtanh": lambda c: nn.Hardtanh(),
    "relu": lambda c: nn.ReLU(),
    "prelu": lambda c: nn.PReLU(c),
    "rprelu": RPReLU,
    "identity": lambda c: nn.Identity(),
    "none": lambda c: nn.Identity(),
}


def make_activation(name: str, channels: int) -> nn.Module:
    """The activation layer called ``name`` for ``channels`` channels (see ACTIVATION_LAYERS)."""
    if name not in ACTIVATION_LAYERS:
        raise UnknownNameError("activation", name, ACTIVATION_LAYERS)
    return ACTIVATION_LAYERS[name](channels)
