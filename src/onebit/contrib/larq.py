"""Larq's quantizers that onebit's own set lacks, registered on import.

    import onebit.contrib.larq  # registers swish_sign, ste_heaviside, ste_tern, dorefa

Written as a user would, through the public API alone (``onebit.register_binarizer``,
``onebit.quant.sign``): each one is an activation and a weight quantizer, its options are
keys of the config's ``quant:`` section (constants set by a schedule that does not depend on
the epoch), and it names Larq's formula. Only ``swish_sign`` is a 1-bit +-1 quantizer;
``onebit.deploy.export`` refuses models using the others (they do not give sign(x)), and
``count_ops`` counts their layers' MACs as full precision unless both sides are 1-bit.
Larq's ``MagnitudeAwareSign`` is onebit's ``magnitude_aware`` weight binarizer.
Source: larq/larq ``larq/quantizers.py`` (``SwishSign``, ``SteHeaviside``, ``SteTern``,
``DoReFa``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch

import onebit

KINDS = ("act", "weight")


def _register_both(fn, name: str, **registration) -> None:
    """Register ``fn`` as an activation and as a weight quantizer called ``name``."""
    for kind in KINDS:
        onebit.register_binarizer(kind, name, **registration)(fn)


def _straight_through(
    x: torch.Tensor, q: torch.Tensor, low: float | None = None, high: float | None = None
) -> torch.Tensor:
    """``q`` in the forward pass, exactly; in the backward pass g * 1{low <= x <= high} to
    ``x`` (the gradient of clamp(x, low, high); the identity without bounds)."""
    passed = x if low is None and high is None else x.clamp(low, high)
    return q.detach() + (passed - passed.detach())


# --------------------------------------------------------------------------- SwishSign


class _SwishSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return onebit.quant.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        bx = ctx.beta * x
        return grad * ctx.beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx)), None


def swish_sign(x: torch.Tensor, beta: float = 5.0) -> torch.Tensor:
    """Sign with the SignSwish surrogate derivative (BNN+).

    forward: sign(x) (sign(0) = +1);
    backward: g * beta * (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)), the derivative
    of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1; beta 5 (``quant.swish_sign.beta``).
    Source: Darabi et al. 2018 (BNN+); larq ``quantizers.SwishSign``.
    """
    return _SwishSign.apply(x, beta)


@dataclass
class SwishSignConfig:
    """SignSwish's sharpness: larger beta, closer to the derivative of sign."""

    beta: float = field(default=5.0, metadata={"min": 0.0})


@dataclass
class SwishSignOptions:
    swish_sign: SwishSignConfig = field(default_factory=SwishSignConfig)


def _swish_sign_state(epoch: float, epochs: int, options: SwishSignOptions) -> dict[str, float]:
    return {"beta": options.swish_sign.beta}


_register_both(
    swish_sign,
    "swish_sign",
    constants={"beta": 5.0},
    schedule=_swish_sign_state,
    options=SwishSignOptions,
)


# --------------------------------------------------------------------------- SteHeaviside


def ste_heaviside(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """Heaviside step with a clipped straight-through gradient: values 0 and 1.

    forward: 1 where x > 0, else 0; backward: g * 1{|x| <= clip_value}, clip_value 1
    (``quant.ste_heaviside.clip_value``). Not +-1: export refuses it.
    Source: larq ``quantizers.SteHeaviside`` (AND-binarization).
    """
    return _straight_through(x, (x > 0).to(x.dtype), -clip_value, clip_value)


@dataclass
class SteHeavisideConfig:
    """The range of SteHeaviside's straight-through gradient."""

    clip_value: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class SteHeavisideOptions:
    ste_heaviside: SteHeavisideConfig = field(default_factory=SteHeavisideConfig)


def _ste_heaviside_state(
    epoch: float, epochs: int, options: SteHeavisideOptions
) -> dict[str, float]:
    return {"clip_value": options.ste_heaviside.clip_value}


_register_both(
    ste_heaviside,
    "ste_heaviside",
    constants={"clip_value": 1.0},
    schedule=_ste_heaviside_state,
    options=SteHeavisideOptions,
)


# --------------------------------------------------------------------------- SteTern


def ste_tern(
    x: torch.Tensor,
    threshold_value: float = 0.05,
    ternary_weight_networks: bool = False,
    clip_value: float = 1.0,
) -> torch.Tensor:
    """Ternarization to {-1, 0, +1} with a clipped straight-through gradient.

    forward: sign(sign(x + D) + sign(x - D)) with sign(0) = 0, i.e. +1 for x >= D, -1 for
    x <= -D, 0 between; D = threshold_value (0.05), or with ``ternary_weight_networks``
    D = 0.7 * mean|x| over the whole tensor (not differentiated);
    backward: g * 1{|x| <= clip_value}, clip_value 1. Options ``quant.ste_tern.*``.
    Not +-1: export refuses it.
    Source: Li et al. 2016 (Ternary Weight Networks); larq ``quantizers.SteTern``.
    """
    threshold = 0.7 * x.detach().abs().mean() if ternary_weight_networks else threshold_value
    q = torch.sign(torch.sign(x + threshold) + torch.sign(x - threshold))
    return _straight_through(x, q, -clip_value, clip_value)


@dataclass
class SteTernConfig:
    """SteTern's threshold (or TWN's 0.7 mean|x|) and gradient range."""

    threshold_value: float = field(default=0.05, metadata={"min": 0.0})
    ternary_weight_networks: bool = False
    clip_value: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class SteTernOptions:
    ste_tern: SteTernConfig = field(default_factory=SteTernConfig)


def _ste_tern_state(epoch: float, epochs: int, options: SteTernOptions) -> dict[str, object]:
    return dataclasses.asdict(options.ste_tern)


_register_both(
    ste_tern,
    "ste_tern",
    constants={"threshold_value": 0.05, "ternary_weight_networks": False, "clip_value": 1.0},
    schedule=_ste_tern_state,
    options=SteTernOptions,
    bits=2,
)


# --------------------------------------------------------------------------- DoReFa


def _quantize_k(x: torch.Tensor, k_bit: int) -> torch.Tensor:
    n = 2**k_bit - 1
    return torch.round(x * n) / n


def dorefa_activations(x: torch.Tensor, k_bit: int = 2) -> torch.Tensor:
    """DoReFa's k-bit activation quantizer, on [0, 1].

    forward: q = round(clip(x, 0, 1) n) / n, n = 2^k_bit - 1 (round half to even);
    backward: g * 1{0 <= x <= 1} (identity through the rounding, the clip stops it outside).
    Not +-1: export refuses it.
    Source: Zhou et al. 2016 (DoReFa-Net), Sec. 2.3; larq ``quantizers.DoReFa``
    (``mode="activations"``).
    """
    return _straight_through(x, _quantize_k(x.clamp(0, 1), k_bit), 0.0, 1.0)


def dorefa_weights(w: torch.Tensor, k_bit: int = 2) -> torch.Tensor:
    """DoReFa's k-bit weight quantizer, on [-1, 1].

    forward: u = tanh(w) / (2 max|tanh(w)|) + 1/2 (the max over the whole tensor, under
    stop-gradient; u = 1/2 if it is 0), q = round(u n) / n, n = 2^k_bit - 1; out = 2 q - 1;
    backward: identity through the rounding, i.e. g * (1 - tanh(w)^2) / max|tanh(w)|.
    Not +-1 (for k_bit > 1): export refuses it.
    Source: Zhou et al. 2016 (DoReFa-Net), Sec. 2.3; larq ``quantizers.DoReFa``
    (``mode="weights"``).
    """
    limited = torch.tanh(w)
    largest = limited.detach().abs().amax().clamp(min=torch.finfo(limited.dtype).tiny)
    u = limited / (2 * largest) + 0.5
    return 2 * _straight_through(u, _quantize_k(u, k_bit)) - 1


def register_dorefa(k_bit: int = 2, name: str = "dorefa") -> None:
    """Register DoReFa's ``k_bit`` quantizers as the activation and the weight quantizer
    ``name`` (``import onebit.contrib.larq`` registers ``dorefa``, 2 bits, Larq's default).
    The width is fixed per name: a layer's ``bits`` and ``count_ops`` read it."""
    for kind, fn in (("act", dorefa_activations), ("weight", dorefa_weights)):
        quantizer = functools.update_wrapper(functools.partial(fn, k_bit=k_bit), fn)
        onebit.register_binarizer(kind, name, bits=k_bit)(quantizer)


register_dorefa()
