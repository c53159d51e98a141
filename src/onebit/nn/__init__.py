"""Binary layers and the small blocks BNN architectures are made of."""

from onebit.nn.binary import BinaryConv2d, BinaryLayer, BinaryLinear, is_binary
from onebit.nn.factory import BinaryLayers
from onebit.nn.layers import (
    ACTIVATION_LAYERS,
    BATCHNORMS,
    AvgPool2d,
    ChannelGate,
    ChannelPadShortcut,
    ChannelShuffle,
    LeakyClip,
    LearnableBias,
    LearnedRescale,
    PReLU,
    RPReLU,
    make_activation,
)

__all__ = [
    "ACTIVATION_LAYERS",
    "BATCHNORMS",
    "AvgPool2d",
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLayers",
    "BinaryLinear",
    "ChannelGate",
    "ChannelPadShortcut",
    "ChannelShuffle",
    "LeakyClip",
    "LearnableBias",
    "LearnedRescale",
    "PReLU",
    "RPReLU",
    "is_binary",
    "make_activation",
]
