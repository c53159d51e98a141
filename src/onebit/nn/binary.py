"""Binary layers: Conv2d / Linear whose input and weight pass through named binarizers."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from onebit.quant.binarizers import Binarizer, act_spec, weight_spec

# Initial values of the schedule buffers, before ``set_schedule_state`` is first called:
# t = k = 1 is the plain tanh surrogate; tau = 1 gives Q = inf (no clamp), as in ReCU's code.
_STATE_INIT = {"t": 1.0, "k": 1.0, "tau": 1.0}
# State kept as Python numbers (no buffer, no host sync to read): the clipped STE's range.
_CONSTANT_INIT = {"clip": 1.0}


class _BinaryMixin:
    """What BinaryConv2d and BinaryLinear share: binarizers, their state and the scale."""

    act_spec: Binarizer | None
    weight_spec: Binarizer | None

    def _setup_binarizers(self, act: str | None, weight: str | None, scale: bool | None) -> None:
        self.act_spec = act_spec(act) if act else None
        self.weight_spec = weight_spec(weight) if weight else None
        specs = [s for s in (self.act_spec, self.weight_spec) if s is not None]
        names = {n for s in specs for n in s.state}
        for name in sorted(names & set(_STATE_INIT)):
            self.register_buffer(name, torch.tensor(_STATE_INIT[name]), persistent=False)
        self.quant_constants = {n: _CONSTANT_INIT[n] for n in sorted(names & set(_CONSTANT_INIT))}
        groups = getattr(self, "groups", 1)  # nn.Linear has no groups
        in_features, out_features = self.weight.shape[1] * groups, self.weight.shape[0]
        if self.act_spec is not None and "bias" in self.act_spec.state:
            # RSign's learnable threshold, one per input channel, initialised to 0.
            self.act_bias = nn.Parameter(torch.zeros(in_features, device=self.weight.device))
        if scale is None:
            scale = self.weight_spec is not None and self.weight_spec.learned_scale
        if scale:
            # ReCU initialises its alpha uniformly in [0, 1); other methods start at 1.
            init = torch.rand if weight == "recu" else torch.ones
            shape = (out_features,) + (1,) * (self.weight.ndim - 2)
            self.alpha = nn.Parameter(init(shape, device=self.weight.device))
        else:
            self.alpha = None

    @property
    def is_binary(self) -> bool:
        """True if the weight or the input is binarized."""
        return self.act_spec is not None or self.weight_spec is not None

    @property
    def bits(self) -> str:
        """``"1w1a"``-style description of what this layer binarizes."""
        w = 1 if self.weight_spec is not None else 32
        a = 1 if self.act_spec is not None else 32
        return f"{w}w{a}a"

    def _state(self, spec: Binarizer) -> dict[str, object]:
        values = {}
        for name in spec.state:
            if name == "training":
                values[name] = self.training
            elif name == "bias":
                values[name] = self.act_bias
            elif name in self.quant_constants:
                values[name] = self.quant_constants[name]
            else:
                values[name] = getattr(self, name)
        return values

    def set_quant_state(self, **values: float) -> list[str]:
        """Fill the schedule buffers this layer has (``t``, ``k``, ``tau``) and its constants
        (``clip``); return the names of the buffers set."""
        set_names = []
        for name, value in values.items():
            buffer = self._buffers.get(name)
            if buffer is not None:
                buffer.fill_(value)
                set_names.append(name)
            elif name in self.quant_constants:
                self.quant_constants[name] = float(value)
        return set_names

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the layer multiplies it (binarized if the layer binarizes it)."""
        if self.act_spec is None:
            return x
        return self.act_spec.fn(x, **self._state(self.act_spec))

    def binary_weight(self) -> torch.Tensor:
        """The weight as the layer multiplies it (binarized and analytically scaled)."""
        if self.weight_spec is None:
            return self.weight
        return self.weight_spec.fn(self.weight, **self._state(self.weight_spec))

    def scaled_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias the layer multiplies by: binarized, with the learned scale
        alpha_c folded in. (x * W + b) alpha = x * (alpha W) + alpha b: scaling the small weight
        instead of the large output saves a pass over every activation, forward and backward."""
        weight, bias = self.binary_weight(), self.bias
        if self.alpha is None:
            return weight, bias
        alpha = self.alpha.reshape(-1)
        weight = weight * alpha.view(-1, *([1] * (weight.ndim - 1)))
        return weight, None if bias is None else bias * alpha

    def _binary_repr(self) -> str:
        scale = ", learned_scale=True" if self.alpha is not None else ""
        act = self.act_spec.name if self.act_spec else None
        weight = self.weight_spec.name if self.weight_spec else None
        return f", act={act!r}, weight={weight!r}{scale}"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """Conv2d with a binarized input and/or weight.

    ``act`` / ``weight`` name binarizers (``onebit.quant.ACTIVATIONS`` / ``WEIGHTS``); either
    may be None to keep that side full precision. ``scale=True`` adds a learnable per-output-
    channel factor on the output (ReCU's alpha; default: on iff the weight binarizer has one).
    Zero padding is applied after the input is binarized, as in every official code.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        act: str | None = "ste",
        weight: str | None = "xnor",
        scale: bool | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            device=device,
            dtype=dtype,
        )
        self._setup_binarizers(act, weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binary_input(x), *self.scaled_weight_and_bias())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Linear with a binarized input and/or weight (arguments as :class:`BinaryConv2d`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act: str | None = "ste",
        weight: str | None = "xnor",
        scale: bool | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_binarizers(act, weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.binary_input(x), *self.scaled_weight_and_bias())

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()


def is_binary(module: nn.Module) -> bool:
    """True for a binary layer that binarizes its weight or its input."""
    return isinstance(module, _BinaryMixin) and module.is_binary
