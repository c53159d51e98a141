"""One place that turns (method, bits) into the layers an architecture is built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from onebit.nn.binary import BinaryConv2d, BinaryLinear
from onebit.nn.layers import make_activation
from onebit.quant.methods import Method, get_method, parse_bits


@dataclass(frozen=True)
class BinaryLayers:
    """Builds the binary convs/linears and block activations of one model.

    With ``bits="32w32a"`` (or ``method="fp"``) it returns plain ``nn.Conv2d`` / ``nn.Linear``,
    so a full-precision twin is an ordinary PyTorch model with the same state-dict keys.
    ``block_act`` overrides the activation the method implies (``Method.block_act``).
    """

    method: Method
    bits: str = "1w1a"
    block_act: str | None = None

    @classmethod
    def of(cls, method: str, bits: str = "1w1a", block_act: str | None = None) -> BinaryLayers:
        parse_bits(bits)
        return cls(get_method(method), bits, block_act)

    @property
    def binary_kwargs(self) -> dict[str, str | bool | None]:
        return self.method.layer_kwargs(self.bits)

    @property
    def is_fp(self) -> bool:
        kwargs = self.binary_kwargs
        return kwargs["act"] is None and kwargs["weight"] is None

    def conv(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> nn.Conv2d:
        """A binary conv (no bias) of this method and bits, or nn.Conv2d if nothing is binary."""
        if self.is_fp:
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False)
        return BinaryConv2d(
            cin, cout, kernel_size, stride, padding, groups=groups, **self.binary_kwargs
        )

    def conv3x3(self, cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return self.conv(cin, cout, 3, stride, 1)

    def conv1x1(self, cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return self.conv(cin, cout, 1, stride, 0)

    def linear(self, cin: int, cout: int, bias: bool = True) -> nn.Linear:
        """A binary linear of this method and bits, or nn.Linear if nothing is binary."""
        if self.is_fp:
            return nn.Linear(cin, cout, bias)
        return BinaryLinear(cin, cout, bias, **self.binary_kwargs)

    def act(self, channels: int, name: str | None = None) -> nn.Module:
        """The block activation (``name`` or this method's) for ``channels`` channels."""
        return make_activation(name or self.block_act or self.method.block_act, channels)
