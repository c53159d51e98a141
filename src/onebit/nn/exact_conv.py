"""The binary convolution of a CPU training step in bfloat16, with float32's result.

A binary layer whose input binarizer outputs +-1 (``signs=True`` at registration) and whose
binarized weight is +-s_c per output channel computes y = s_c * n, n an integer sum of +-1
products. bfloat16 holds every +-1 exactly and every integer up to 256 (every even one up to
512), and oneDNN's bfloat16 convolution accumulates in float32: split the input channels so
that no partial sum can pass those bounds, and each partial n comes back exact. The parts are
added in float32 (exact: integers) and multiplied by s_c once, so y is n * s_c rounded once
to float32, nearer to the exact value than float32's own convolution, which rounds after
every addition of +-s_c. On a CPU with AVX512-BF16 or AMX the forward then takes 0.3-0.5 of
float32's time (benchmarks/train_speed.py --exact-conv); the backward stays float32 (its
gradients are not integers). Elsewhere (no bfloat16 hardware, autocast, CUDA, a weight that is
not +-s_c, torch.compile) the layer runs PyTorch's convolution as before.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from onebit.machine import cpu_has_bf16
from onebit.quant import fused

# Set to False to always use PyTorch's float32 convolution (benchmarks and tests compare).
enabled = True


@cache
def _hardware() -> bool:
    """bfloat16 convolutions run natively here (else they are emulated, slower than fp32)."""
    return cpu_has_bf16() and torch.backends.mkldnn.is_available()


def chunks(in_channels: int, taps: int) -> list[tuple[int, int]]:
    """Input-channel ranges [lo, hi) whose partial sums bfloat16 holds exactly: each of at
    most 256 terms, or of at most 512 in an even number of channels (each output then sums an
    even number of +-1 terms, zero padding or not, so the sum is even, and bfloat16 holds
    every even integer up to 512); [] where a single channel has more than 512 taps."""

    def exact(size: int) -> bool:
        return size * taps <= 256 or (size % 2 == 0 and size * taps <= 512)

    for parts in range(1, in_channels + 1):
        per = -(-in_channels // parts)
        per += per % 2 if per > 1 and not exact(per) else 0
        ranges = [(lo, min(lo + per, in_channels)) for lo in range(0, in_channels, per)]
        if all(exact(hi - lo) for lo, hi in ranges):
            return ranges
    return []


def weight_scale(weight: torch.Tensor) -> torch.Tensor | None:
    """s with |weight| = s_c throughout each output channel c (so weight = s_c * sign), fp32
    [cout]; None where some channel has two magnitudes (or a NaN)."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    mag = flat.abs()
    scale = mag.amax(dim=1) if flat.numel() else mag.new_zeros(flat.shape[0])
    return scale if torch.equal(mag, scale[:, None].expand_as(mag)) else None


def usable(layer: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`conv2d` may compute ``layer`` (a binary Conv2d) on its binarized input
    ``x``; the weight is checked by :func:`weight_scale`."""
    spec = getattr(layer, "act_spec", None)
    return (
        enabled
        and spec is not None
        and spec.signs
        and layer.weight_spec is not None
        and fused._fused is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.ndim == 4
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and _hardware()
    )


class _ExactConv(torch.autograd.Function):
    """y = conv2d(x, weight) + bias from bfloat16 partial sums (forward), float32 gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, parts, stride, padding, dilation):
        x = fused.dense(x)
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        signs = weight.detach().sign().to(torch.bfloat16, memory_format=fmt)
        out = None
        for i, (lo, hi) in enumerate(parts):
            xs = x if (lo, hi) == (0, x.shape[1]) else x[:, lo:hi]
            part = F.conv2d(
                xs.to(torch.bfloat16, memory_format=fmt),
                signs if xs is x else signs[:, lo:hi].contiguous(memory_format=fmt),
                None,
                stride,
                padding,
                dilation,
            )
            if out is None:
                out = torch.empty_like(part, dtype=torch.float32)
            last = i == len(parts) - 1
            fused.bf16_accumulate(part, out, scale if last else None, accumulate=i > 0)
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, bias is not None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conv
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], has_bias and needs[2]]
        dx, dw, db = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            1,
            mask,
        )
        return dx, dw, db, None, None, None, None, None


def conv2d(
    layer: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """``layer``'s convolution of its +-1 input ``x`` with its binarized weight (and bias)
    exactly as described above, or None where the weight is not +-s_c (the caller then runs
    PyTorch's); :func:`usable` must hold."""
    parts = chunks(weight.shape[1], weight.shape[2] * weight.shape[3])
    scale = weight_scale(weight) if parts and weight.dtype == torch.float32 else None
    if scale is None:
        return None
    return _ExactConv.apply(
        x, weight, bias, scale, parts, layer.stride, layer.padding, layer.dilation
    )
