"""Activation and weight binarizers: one named function per published method.

Every binarizer is a differentiable ``f(x, **state)``: the forward pass is ``sign`` (with
``sign(0) = +1``, see :func:`sign`), the backward pass is the method's surrogate gradient.
Each is registered with :func:`onebit.quant.register_binarizer`, which also records the state
it reads (``t``, ``k``, ``tau``, ``clip``), the schedule that sets it and the ``quant:``
options that schedule reads (:class:`ClipOptions`, :class:`EdeOptions`, :class:`TauOptions`).
Pick one by name with :func:`act` / :func:`weight`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from onebit.quant import fused
from onebit.quant.registry import declare_options, register_binarizer
from onebit.quant.schedules import ede_schedule, tau_schedule

State = torch.Tensor | float

# A binary layer's binarizers when none are named: XNOR-Net's.
DEFAULT_ACT, DEFAULT_WEIGHT = "ste", "xnor"


def sign(x: torch.Tensor) -> torch.Tensor:
    """Binarize to {-1, +1}: +1 where x >= 0, else -1.

    The official codes use ``torch.sign`` (0 -> 0) while training; a deployed network has no
    zero state, so onebit defines sign(0) = +1 everywhere, in training and in deployment.
    """
    if fused.usable(x):
        return fused.sign(x)
    # copysign(1, x + 0): adding +0 turns -0.0 into +0.0; two vectorised passes, where
    # torch.where(x >= 0, 1, -1) takes ~15x longer on the CPU (docs/results.md, speed)
    return torch.copysign(x.new_ones(()), x + 0.0)


def _as_tensor(value: State, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _sign_function(
    name: str, surrogate: Callable[..., torch.Tensor], kernel: str | None = None
) -> type:
    """Build the autograd.Function for ``sign`` with the given surrogate derivative.

    forward: ``sign(x) * scale`` (``scale`` optional, never differentiated);
    backward: ``g * surrogate(x, t, k)``, unscaled: the scale is a forward-only factor, as in
    the official codes (Bi-Real's ``scaling * sign(W)`` detached around a clipped STE).
    ``t`` and ``k`` are the EDE state (None for the other surrogates). ``kernel``: the name of
    the fused CPU backward of the same formula (:func:`onebit.quant.fused.surrogate_backward`).
    """

    class SignFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, t, k):
            if kernel is not None and fused.usable(x):
                x = fused.dense(x)  # copied once here, not again in the backward
            ctx.save_for_backward(x, t, k)
            out = sign(x)
            return out if scale is None else out * scale

        @staticmethod
        def backward(ctx, grad):
            x, t, k = ctx.saved_tensors
            if kernel is not None and fused.usable(x) and grad.dtype == x.dtype:
                return fused.surrogate_backward(kernel, x, grad), None, None, None
            return grad * surrogate(x, t, k), None, None, None

    SignFunction.__name__ = SignFunction.__qualname__ = f"Sign{name}"
    return SignFunction


def _clip_grad(x: torch.Tensor, t: None, k: None) -> torch.Tensor:
    return (x.abs() <= 1).to(x.dtype)


def _approx_sign_grad(x: torch.Tensor, t: None, k: None) -> torch.Tensor:
    # max(0, 2 - 2|x|), in place on one temporary
    return x.abs().mul_(-2).add_(2).clamp_(min=0)


def _ede_grad(x: torch.Tensor, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (k * t * (1 - torch.tanh(t * x) ** 2)).to(x.dtype)


def _identity_grad(x: torch.Tensor, t: None, k: None) -> torch.Tensor:
    return torch.ones_like(x)


def _clip_value_grad(x: torch.Tensor, t: torch.Tensor, k: None) -> torch.Tensor:
    return (x.abs() <= t).to(x.dtype)  # t carries the clip value


_SignClip = _sign_function("Clip", _clip_grad, "clip")
_SignClipValue = _sign_function("ClipValue", _clip_value_grad)
_SignApprox = _sign_function("Approx", _approx_sign_grad, "approx")
_SignEDE = _sign_function("EDE", _ede_grad)
_SignIdentity = _sign_function("Identity", _identity_grad)


# --------------------------------------------------------------------------- options
# Each dataclass is a group of keys of the config's quant: section, read by the schedules below.


@dataclass
class ClipOptions:
    """The clipped straight-through estimators' range: g * 1{|x| <= ste_clip} (mmcls: 1.25)."""

    ste_clip: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class EdeConfig:
    """IR-Net's EDE schedule: t from t_min to t_max over training."""

    t_min: float = field(default=1e-3, metadata={"min": 0.0})
    t_max: float = field(default=10.0, metadata={"min": 0.0})


@dataclass
class EdeOptions:
    """``quant.ede``: the EDE schedule, shared by the ``ede`` and ``irnet`` binarizers."""

    ede: EdeConfig = field(default_factory=EdeConfig)


@dataclass
class TauOptions:
    """``quant.tau``: ReCU's [tau_min, tau_max]."""

    tau: list[float] = field(default_factory=lambda: [0.85, 0.99], metadata={"length": 2})


# the quant: keys in the order configs and docs/training.md list them
declare_options(TauOptions, EdeOptions, ClipOptions)


def _clip_state(epoch: float, epochs: int, options: ClipOptions) -> dict[str, float]:
    return {"clip": options.ste_clip}


def _ede_state(epoch: float, epochs: int, options: EdeOptions) -> dict[str, float]:
    t, k = ede_schedule(epoch, epochs, options.ede.t_min, options.ede.t_max)
    return {"t": t, "k": k}


def _tau_state(epoch: float, epochs: int, options: TauOptions) -> dict[str, float]:
    return {"tau": tau_schedule(epoch, epochs, *options.tau)}


# The clipped STE's range is a Python number: no host sync to read it, and 1 selects the fused
# CPU kernel.
_CLIPPED = {"constants": {"clip": 1.0}, "schedule": _clip_state, "options": ClipOptions}
# t = k = 1 before the first schedule call: the plain tanh surrogate.
_EDE = {
    "state": {"t": 1.0, "k": 1.0},
    "schedule": _ede_state,
    "log": {"t": "ede_t", "k": "ede_k"},
    "options": EdeOptions,
}


# --------------------------------------------------------------------------- activations


def _clipped_sign(x: torch.Tensor, scale: torch.Tensor | None, clip: float) -> torch.Tensor:
    """sign(x) (times ``scale``) with the gradient g * 1{|x| <= clip}, unscaled; ``clip`` is a
    Python number (no host sync), 1 on the fused CPU path."""
    if clip == 1.0:
        return _SignClip.apply(x, scale, None, None)
    return _SignClipValue.apply(x, scale, _as_tensor(clip, x), None)


@register_binarizer("act", "ste", signs=True, **_CLIPPED)
def ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Straight-through sign with hardtanh clip (BinaryConnect, XNOR-Net).

    forward: sign(x); backward: g * 1{|x| <= clip}, clip 1 (``quant.ste_clip``; the mmcls
    BNN code uses 1.25).
    Source: Courbariaux et al. 2016 (BNN), Rastegari et al. 2016 (XNOR-Net).
    """
    return _clipped_sign(x, None, clip)


@register_binarizer("act", "approx_sign", signs=True)
def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with Bi-Real Net's piecewise-quadratic approximation as its derivative.

    forward: sign(x); backward: g * (2 + 2x) on [-1, 0), g * (2 - 2x) on [0, 1), 0 elsewhere,
    i.e. g * max(0, 2 - 2|x|).
    Source: Liu et al. 2018 (Bi-Real Net), official ``BinaryActivation``.
    """
    return _SignApprox.apply(x, None, None, None)


@register_binarizer("act", "ede", signs=True, **_EDE)
def ede(x: torch.Tensor, t: State = 1.0, k: State = 1.0) -> torch.Tensor:
    """Sign with IR-Net's Error Decay Estimator: a tanh surrogate sharpened over training.

    forward: sign(x); backward: g * k * t * (1 - tanh(t x)^2), with (t, k) from
    :func:`onebit.quant.ede_schedule`.
    Source: Qin et al. 2020 (IR-Net), official ``BinaryQuantize``.
    """
    return _SignEDE.apply(x, None, _as_tensor(t, x), _as_tensor(k, x))


class _RecuSign(torch.autograd.Function):
    """sign(x / s) = sign(x) with ReCU's backward through the per-sample standardisation
    z = x / s, s = sqrt(var(x over C, H, W) + 1e-5) (unbiased), in a few fused passes.

    With h = g * max(0, 2 - 2|z|) and n values per sample, the gradient of the official
    ``x / std`` followed by approx-sign is
    dL/dx_j = h_j / s - (x_j - mean(x)) / ((n - 1) s^3) * sum_i h_i x_i
    (the second term: the dependence of s on x). The autograd graph of the same formula takes
    ~4x the time on the CPU (Welford variance, division and its backward, separate passes).
    """

    @staticmethod
    def forward(ctx, x):
        if fused.usable(x):
            x = fused.dense(x)
            out, mean, std = fused.recu_forward(x)
            ctx.save_for_backward(x, mean, std)
            return out
        flat = x.detach().reshape(x.shape[0], -1).float()
        n = flat.shape[1]
        mean = flat.mean(dim=1)
        # (sum x^2 - n mean^2) / (n - 1): two reductions, ~15x faster than var() on the CPU;
        # activations have |mean| of the order of their std, so no precision is lost here
        squares = torch.linalg.vector_norm(flat, dim=1).square()
        var = (squares - n * mean.square()).clamp(min=0) / max(n - 1, 1)
        ctx.save_for_backward(x, mean, torch.sqrt(var + 1e-5))
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        x, mean, std = ctx.saved_tensors
        if fused.usable(x) and grad.dtype == x.dtype:
            return fused.recu_backward(x, grad, mean, std)
        shape = (-1,) + (1,) * (x.ndim - 1)
        n = x[0].numel()
        inv = (1 / std).to(x.dtype).view(shape)
        h = x.abs().mul_(-2 * inv).add_(2).clamp_(min=0).mul_(grad)  # g * max(0, 2 - 2|z|)
        dot = torch.linalg.vecdot(h.reshape(h.shape[0], -1), x.reshape(x.shape[0], -1))
        c = (dot.float() / (max(n - 1, 1) * std**3)).to(x.dtype).view(shape)
        return h.mul_(inv).addcmul_(x, c, value=-1).add_(mean.to(x.dtype).view(shape) * c)


@register_binarizer("act", "recu", training=True, signs=True)
def recu_act(x: torch.Tensor, training: bool = True) -> torch.Tensor:
    """ReCU's activation: per-sample standardisation in training, then approx-sign.

    forward: sign(x); in training x is first divided by its per-sample standard deviation,
    x / sqrt(var(x over C, H, W) + 1e-5) (unbiased variance), which changes only the
    gradient; backward: g * max(0, 2 - |2x|) on the standardised x.
    Source: Xu et al. 2021 (ReCU), official ``BinaryQuantize_a`` and ``BinarizeConv2d``.
    """
    if training:
        return _RecuSign.apply(x)  # the variance in fp32: under autocast x may be bf16
    return _SignApprox.apply(x, None, None, None)


@register_binarizer("act", "rsign", learned_bias=True, signs=True)
def rsign(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """ReActNet's RSign: sign with a learnable per-channel threshold.

    forward: sign(x + b_c); backward as ``approx_sign`` (to x and to b).
    Source: Liu et al. 2020 (ReActNet), official ``LearnableBias`` + ``BinaryActivation``.
    """
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return _SignApprox.apply(x, None, None, None)


# --------------------------------------------------------------------------- weights


def _filter_dims(w: torch.Tensor) -> tuple[int, ...]:
    """Dims of one output channel's filter (everything but dim 0)."""
    return tuple(range(1, w.ndim))


@register_binarizer("weight", "sign", **_CLIPPED)
def sign_weight(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Plain sign of the latent weight, no scale, clipped STE (BNN, Real-to-Binary).

    forward: sign(W); backward: g * 1{|W| <= clip}, clip 1 (``quant.ste_clip``).
    Source: Courbariaux et al. 2016; Martinez et al. 2020 (``ste_sign`` weights).
    """
    return _clipped_sign(w, None, clip)


@register_binarizer("weight", "xnor", **_CLIPPED)
def xnor(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Sign scaled by each filter's mean magnitude (XNOR-Net, Bi-Real, ReActNet).

    forward: alpha_c * sign(W_c), alpha_c = mean|W_c| (detached);
    backward: g * 1{|W| <= clip} (the clipped STE of Bi-Real's ``HardBinaryConv``, unscaled;
    clip 1, ``quant.ste_clip``).
    Source: Rastegari et al. 2016; Liu et al. 2018, official ``HardBinaryConv``.
    """
    alpha = w.detach().abs().mean(dim=_filter_dims(w), keepdim=True)
    return _clipped_sign(w, alpha, clip)


@register_binarizer("weight", "xnor_exact", **_CLIPPED)
def xnor_exact(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """XNOR-Net's weights with the exact gradient through the scale (XNOR-Net's option).

    forward: alpha_c * sign(W_c), alpha_c = mean|W_c|, as ``xnor``;
    backward: alpha_c * g * 1{|W| <= clip} + sign(W) / n * sum_c(g * sign(W)) over each
    filter's n weights: alpha_c is not detached, d alpha_c / dW = sign(W) / n. (The official
    Torch/PyTorch code multiplies this gradient by n (1 - 1/C_in) too, a constant per layer
    that Adam, its optimizer, is blind to; onebit does not.)
    Source: Rastegari et al. 2016, Sec. 3.1; allenai/XNOR-Net ``updateBinaryGradWeight``.
    """
    alpha = w.abs().mean(dim=_filter_dims(w), keepdim=True)
    return _clipped_sign(w, None, clip) * alpha


@register_binarizer("weight", "magnitude_aware", **_CLIPPED)
def magnitude_aware(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Sign scaled by each filter's mean magnitude, with the scale in the gradient too.

    forward: alpha_c * sign(W_c), alpha_c = mean|W_c| (detached), as ``xnor``;
    backward: g * alpha_c * 1{|W| <= clip} (clip 1): the magnitude-aware gradient of Bi-Real
    Net (paper Eq. 7, dW_b/dW_r ~ alpha_c d sign(W_r)/dW_r; the Caffe recipe), where ``xnor``
    passes g unscaled as the official PyTorch ``HardBinaryConv`` does. (The released Caffe
    training layer passes dL/dW_b unscaled and unclipped; its magnitude-aware kernel sits in
    the BN-retraining build.)
    Source: Liu et al. 2018 (Bi-Real Net), Sec. 3.3; larq ``MagnitudeAwareSign``.
    """
    alpha = w.detach().abs().mean(dim=_filter_dims(w), keepdim=True)
    return _clipped_sign(w, None, clip) * alpha


@register_binarizer("weight", "irnet", **_EDE)
def irnet(w: torch.Tensor, t: State = 1.0, k: State = 1.0) -> torch.Tensor:
    """IR-Net's Libra-PB: balanced, standardised weights with a power-of-two scale.

    forward: Wb = (W_c - mean(W_c)) / std(W_c) (unbiased std, differentiable);
    s_c = 2^round(log2(mean|Wb_c|)) (detached); out = s_c * sign(Wb).
    backward: the EDE gradient on Wb, g * s_c * k * t * (1 - tanh(t Wb)^2), then through the
    standardisation (the official code multiplies the detached scale after the quantizer).
    Source: Qin et al. 2020 (IR-Net), official ``IRConv2d``.
    """
    dims = _filter_dims(w)
    wb = w - w.mean(dim=dims, keepdim=True)
    wb = wb / wb.std(dim=dims, keepdim=True)
    scale = torch.exp2(torch.round(torch.log2(wb.detach().abs().mean(dim=dims, keepdim=True))))
    return _SignEDE.apply(wb, None, _as_tensor(t, w), _as_tensor(k, w)) * scale


# tau = 1 before the first schedule call gives Q = inf (no clamp), as in ReCU's code.
@register_binarizer(
    "weight",
    "recu",
    state={"tau": 1.0},
    schedule=_tau_state,
    log={"tau": "tau"},
    options=TauOptions,
    learned_scale=True,
    scale_init="uniform",
)
def recu_weight(w: torch.Tensor, tau: State = 1.0) -> torch.Tensor:
    """ReCU: standardise each filter, clamp the outliers at a tau-quantile, take the sign.

    forward: W0 = W_c - mean(W_c); W1 = W0 / (sqrt(var(W0_c) + 1e-5) / (2 sqrt 2));
    Q = -mean|W1| (whole layer, detached) * ln(2 - 2 tau); W2 = clamp(W1, -Q, Q);
    out = sign(W2). The layer multiplies its output by a learnable alpha_c.
    backward: identity to W2, then through the clamp and the standardisation.
    Q is computed on the device (the official code calls ``.item()``, a host sync).
    Source: Xu et al. 2021 (ReCU), official ``BinarizeConv2d``.
    """
    dims = _filter_dims(w)
    w0 = w - w.mean(dim=dims, keepdim=True)
    w1 = w0 / (torch.sqrt(w0.var(dim=dims, keepdim=True) + 1e-5) / (2 * math.sqrt(2)))
    q = -w1.detach().abs().mean() * torch.log(2 - 2 * _as_tensor(tau, w))
    w2 = torch.clamp(w1, -q, q)
    return _SignIdentity.apply(w2, None, None, None)
