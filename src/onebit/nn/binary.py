"""Binary layers: Conv2d / Linear whose input and weight pass through named binarizers."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from onebit.errors import ConfigError
from onebit.nn import exact_conv
from onebit.quant.binarizers import DEFAULT_ACT, DEFAULT_WEIGHT
from onebit.quant.registry import SCALE_INITS, Binarizer, act_spec, weight_spec


class BinaryLayer:
    """What BinaryConv2d and BinaryLinear share: binarizers, their state and the scale.

    Each binarizer's ``state`` is a non-persistent 0-dim buffer named as the state, and its
    ``constants`` are Python numbers in ``quant_constants[kind]`` (``"act"``/``"weight"``);
    both start at the registered initial values until ``onebit.quant.set_schedule_state``
    sets them.
    """

    act_spec: Binarizer | None
    weight_spec: Binarizer | None

    def _setup_binarizers(self, act: str | None, weight: str | None, scale: bool | None) -> None:
        self.act_spec = act_spec(act) if act else None
        self.weight_spec = weight_spec(weight) if weight else None
        _check_shared_state(self.quant_binarizers)
        self.quant_constants: dict[str, dict[str, object]] = {}
        for spec in self.quant_binarizers:
            for name, value in spec.state.items():
                if name not in self._buffers:
                    if hasattr(self, name):
                        raise ConfigError(
                            f"{spec.kind} binarizer {spec.name!r}: its state {name!r} is the "
                            f"name of an attribute of {type(self).__name__}; rename it"
                        )
                    self.register_buffer(name, torch.tensor(float(value)), persistent=False)
            self.quant_constants[spec.kind] = dict(spec.constants)
        groups = getattr(self, "groups", 1)  # nn.Linear has no groups
        in_features, out_features = self.weight.shape[1] * groups, self.weight.shape[0]
        if self.act_spec is not None and self.act_spec.learned_bias:
            # a learnable threshold per input channel (ReActNet's), initialised to 0
            self.act_bias = nn.Parameter(torch.zeros(in_features, device=self.weight.device))
        if scale is None:
            scale = self.weight_spec is not None and self.weight_spec.learned_scale
        if scale:
            init = SCALE_INITS[self.weight_spec.scale_init if self.weight_spec else "ones"]
            shape = (out_features,) + (1,) * (self.weight.ndim - 2)
            self.alpha = nn.Parameter(init(shape, device=self.weight.device))
        else:
            self.alpha = None

    @property
    def quant_binarizers(self) -> tuple[Binarizer, ...]:
        """The binarizers this layer uses (its activation one first)."""
        return tuple(s for s in (self.act_spec, self.weight_spec) if s is not None)

    @property
    def is_binary(self) -> bool:
        """True if the weight or the input is binarized."""
        return self.act_spec is not None or self.weight_spec is not None

    @property
    def bits(self) -> str:
        """``"1w1a"``-style description of what this layer quantizes, and to how many bits."""
        w = self.weight_spec.bits if self.weight_spec is not None else 32
        a = self.act_spec.bits if self.act_spec is not None else 32
        return f"{w}w{a}a"

    def _state(self, spec: Binarizer) -> dict[str, object]:
        values: dict[str, object] = {name: getattr(self, name) for name in spec.state}
        values.update(self.quant_constants[spec.kind])
        if spec.training:
            values["training"] = self.training
        if spec.learned_bias:
            values["bias"] = self.act_bias
        return values

    def set_quant_state(self, kind: str, **values: object) -> None:
        """Set the state of this layer's ``kind`` (``"act"``/``"weight"``) binarizer: fill its
        buffers in place and set its constants."""
        constants = self.quant_constants[kind]
        for name, value in values.items():
            if name in constants:
                constants[name] = value
            else:
                self._buffers[name].fill_(value)

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


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """Conv2d with a binarized input and/or weight.

    ``act`` / ``weight`` name binarizers (``onebit.quant.ACTIVATIONS`` / ``WEIGHTS``); either
    may be None to keep that side full precision. ``scale=True`` adds a learnable per-output-
    channel factor alpha_c on the output (default: on iff the weight binarizer registered
    ``learned_scale``).
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
        act: str | None = DEFAULT_ACT,
        weight: str | None = DEFAULT_WEIGHT,
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
        x = self.binary_input(x)
        weight, bias = self.scaled_weight_and_bias()
        if exact_conv.usable(self, x):  # a CPU step, +-1 inputs: bf16 sums, fp32's result
            out = exact_conv.conv2d(self, x, weight, bias)
            if out is not None:
                return out
        return self._conv_forward(x, weight, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()


class BinaryLinear(BinaryLayer, nn.Linear):
    """Linear with a binarized input and/or weight (arguments as :class:`BinaryConv2d`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act: str | None = DEFAULT_ACT,
        weight: str | None = DEFAULT_WEIGHT,
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


def _check_shared_state(specs: tuple[Binarizer, ...]) -> None:
    """A layer holds one buffer per state name: an activation and a weight binarizer may both
    read one only if one schedule sets it (a method whose two binarizers share a schedule).
    Constants are kept per binarizer."""
    if len(specs) < 2:
        return
    first, second = specs
    shared = sorted(set(first.state) & set(second.state))
    if shared and first.schedule is not second.schedule:
        raise ConfigError(
            f"binarizers {first.name!r} (act) and {second.name!r} (weight) both read state "
            f"{shared[0]!r}, set by different schedules; a layer holds one {shared[0]!r}: "
            "rename it in one of them"
        )


def is_binary(module: nn.Module) -> bool:
    """True for a binary layer that binarizes its weight or its input."""
    return isinstance(module, BinaryLayer) and module.is_binary
