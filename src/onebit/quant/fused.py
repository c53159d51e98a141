"""Fused CPU passes of the training binarizers (C kernels in ``kernels/binarize.c``).

The binarizers in :mod:`onebit.quant.binarizers` call these when the tensors are float32 or
bfloat16 (autocast; computed in float32 and rounded once) on the CPU, dense (NCHW- or
NHWC-contiguous) and not being traced by ``torch.compile`` (which fuses the PyTorch formulas
itself); everywhere else, and where the extension was not built (no C compiler at install),
they compute the same formulas with PyTorch operators. Both paths are tested against each
other and against the formulas.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # torch first: the kernels then share PyTorch's OpenMP runtime
    from onebit.quant import _fused
except ImportError:  # no compiler at install time
    _fused = None

# Set to False to force the PyTorch path (tests compare the two).
enabled = True


def _flat(t: torch.Tensor) -> np.ndarray:
    """The elements of dense ``t`` as a 1-D array in memory order (a view, no copy);
    bfloat16, which numpy lacks, as its 16 bits (int16)."""
    if t.ndim == 4 and not t.is_contiguous():
        t = t.permute(0, 2, 3, 1)  # channels-last: NHWC is contiguous
    t = t.detach().reshape(-1)
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def usable(x: torch.Tensor) -> bool:
    """True if the fused kernels can take ``x``: float32 or bfloat16 (autocast), CPU, eager.
    A strided view (FIRNet's channel halves) is copied to a dense tensor first (:func:`dense`):
    one pass, where the PyTorch formulas take several."""
    return (
        enabled
        and _fused is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.compiler.is_compiling()
    )


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if it is NCHW- or NHWC-dense (what the kernels read), else a contiguous copy."""
    if x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` laid out in memory like ``x`` (a gradient may arrive in another layout)."""
    if t.stride() == x.stride():
        return t
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    return t.contiguous(memory_format=fmt)


def sign(x: torch.Tensor) -> torch.Tensor:
    """x >= 0 ? +1 : -1 in one pass (``usable(x)`` must hold)."""
    x = dense(x)
    out = torch.empty_like(x)
    _fused.sign(_flat(x), _flat(out), torch.get_num_threads())
    return out


def surrogate_backward(name: str, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """g * 1{|x| <= 1} (``"clip"``) or g * max(0, 2 - 2|x|) (``"approx"``) in one pass."""
    x = dense(x)
    dx = torch.empty_like(x)
    kernel = _fused.clip_backward if name == "clip" else _fused.approx_backward
    kernel(_flat(x), _flat(_like(x, grad)), _flat(dx), torch.get_num_threads())
    return dx


def recu_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sign(x), per-sample mean, per-sample sqrt(unbiased var + 1e-5)) in one pass; the
    statistics in float32 whatever ``x``'s type. ``x`` must be dense (:func:`dense`): the
    backward takes the same tensor."""
    out = torch.empty_like(x)
    mean = x.new_empty(x.shape[0], dtype=torch.float32)
    std = x.new_empty(x.shape[0], dtype=torch.float32)
    n = x[0].numel() if x.shape[0] else 0
    _fused.recu_forward(
        _flat(x), _flat(out), mean.numpy(), std.numpy(), (x.shape[0], n), torch.get_num_threads()
    )
    return out, mean, std


def recu_backward(
    x: torch.Tensor, grad: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """ReCU's activation gradient through its standardisation, in two passes per sample."""
    x = dense(x)
    dx = torch.empty_like(x)
    n = x[0].numel() if x.shape[0] else 0
    _fused.recu_backward(
        _flat(x),
        _flat(_like(x, grad)),
        mean.numpy(),
        std.numpy(),
        _flat(dx),
        (x.shape[0], n),
        torch.get_num_threads(),
    )
    return dx


def _channels(x: torch.Tensor) -> tuple[tuple[int, int, int], bool]:
    """((batch, channels, spatial), channels_last) of a dense ``x`` of 2 or more dims."""
    batch, channels = x.shape[0], x.shape[1]
    return (batch, channels, x[0, 0].numel() if batch and channels else 0), not x.is_contiguous()


def _vector(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).contiguous().numpy()


def rprelu_forward(
    x: torch.Tensor, shift_in: torch.Tensor, slope: torch.Tensor, shift_out: torch.Tensor
) -> torch.Tensor:
    """PReLU_slope(x + shift_in) + shift_out per channel in one pass (``usable(x)``, float32;
    three per-channel float32 tensors of C items)."""
    x = dense(x)
    out = torch.empty_like(x)
    sizes, channels_last = _channels(x)
    _fused.rprelu_forward(
        _flat(x),
        _flat(out),
        _vector(shift_in),
        _vector(slope),
        _vector(shift_out),
        sizes,
        channels_last,
        torch.get_num_threads(),
    )
    return out


def rprelu_backward(
    x: torch.Tensor, grad: torch.Tensor, shift_in: torch.Tensor, slope: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d x, d shift_in, d slope, d shift_out) of :func:`rprelu_forward` in one pass; the three
    per-channel gradients are summed in float64 and returned as float32 vectors of C items."""
    x = dense(x)
    dx = torch.empty_like(x)
    sizes, channels_last = _channels(x)
    sums = np.zeros(3 * sizes[1], dtype=np.float64)
    _fused.rprelu_backward(
        _flat(x),
        _flat(_like(x, grad)),
        _vector(shift_in),
        _vector(slope),
        _flat(dx),
        sums,
        sizes,
        channels_last,
        torch.get_num_threads(),
    )
    d_in, d_slope, d_out = torch.from_numpy(sums).float().view(3, -1).unbind(0)
    return dx, d_in, d_slope, d_out


def avgpool2_forward(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 2) of a contiguous (NCHW) float32 ``x``, bit for bit, in one pass."""
    n, c, h, w = x.shape
    out = x.new_empty(n, c, h // 2, w // 2)
    _fused.avgpool2_forward(_flat(x), _flat(out), (n * c, h, w), torch.get_num_threads())
    return out


def avgpool2_backward(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The input gradient of :func:`avgpool2_forward` for an input of ``shape`` (NCHW)."""
    n, c, h, w = shape
    dx = grad.new_empty(shape)
    grad = grad.contiguous()
    _fused.avgpool2_backward(_flat(grad), _flat(dx), (n * c, h, w), torch.get_num_threads())
    return dx


def bf16_accumulate(
    part: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None, accumulate: bool
) -> None:
    """out = ((out if accumulate else 0) + part) * scale_c in place: ``part`` bfloat16,
    ``out`` float32 laid out like it (NCHW or channels-last), ``scale`` C float32 or None."""
    sizes, channels_last = _channels(out)
    _fused.bf16_accumulate(
        _flat(_like(out, part)),
        _flat(out),
        None if scale is None else _vector(scale.float()),
        sizes,
        channels_last,
        accumulate,
        torch.get_num_threads(),
    )


def bn_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) per channel (dim 1) of a dense float32 ``x`` of 2+ dims, in
    float64: one pass of shifted sums (the shift: each channel's first item, so a mean far
    from 0 loses no precision), float over blocks, float64 across."""
    sizes, channels_last = _channels(x)
    count = sizes[0] * sizes[2]
    shift = x.detach()[(0, slice(None)) + (0,) * (x.ndim - 2)].contiguous()
    sums = np.zeros(2 * sizes[1], dtype=np.float64)
    _fused.bn_stats(_flat(x), _vector(shift), sums, sizes, channels_last, torch.get_num_threads())
    s0, s1 = torch.from_numpy(sums).view(2, -1).unbind(0)
    mean = s0 / count
    return shift.double() + mean, (s1 / count - mean.square()).clamp(min=0)


def bn_act_forward(
    x: torch.Tensor,
    shortcut: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float],
) -> torch.Tensor:
    """y = act(x scale_c + shift_c + shortcut) in one pass: dense float32 ``x`` (and
    ``shortcut`` laid out like it, or None); ``act`` = (b1, a, b2, lo, hi), C-item float32
    vectors and bounds (binarize.c: identity, ReLU, hardtanh, PReLU, RPReLU)."""
    y = torch.empty_like(x)
    sizes, channels_last = _channels(x)
    b1, a, b2, lo, hi = act
    _fused.bn_act_forward(
        _flat(x),
        None if shortcut is None else _flat(_like(x, shortcut)),
        _flat(y),
        *(_vector(v) for v in (scale, shift, b1, a, b2)),
        lo,
        hi,
        sizes,
        channels_last,
        torch.get_num_threads(),
    )
    return y


def bn_act_backward(
    x: torch.Tensor,
    shortcut: torch.Tensor | None,
    grad: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    act: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz, sums) of :func:`bn_act_forward`: dz the gradient at x scale + shift + shortcut,
    sums float64 (4, C): sum dz, sum dz (x - mean), d a, d b2."""
    dz = torch.empty_like(x)
    sizes, channels_last = _channels(x)
    sums = np.zeros(4 * sizes[1], dtype=np.float64)
    b1, a, b2, lo, hi = act
    _fused.bn_act_backward(
        _flat(x),
        None if shortcut is None else _flat(_like(x, shortcut)),
        _flat(_like(x, grad)),
        _flat(dz),
        *(_vector(v) for v in (mean, scale, shift, b1, a, b2)),
        lo,
        hi,
        sums,
        sizes,
        channels_last,
        torch.get_num_threads(),
    )
    return dz, torch.from_numpy(sums).view(4, -1)


def bn_input_backward(
    x: torch.Tensor,
    dz: torch.Tensor,
    mean: torch.Tensor,
    coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """dx = dz A_c + (x - mean_c) B_c + C_c in one pass (``coefficients`` = (A, B, C), C-item
    float32 vectors; ``dz`` laid out like ``x``)."""
    dx = torch.empty_like(x)
    sizes, channels_last = _channels(x)
    _fused.bn_input_backward(
        _flat(x),
        _flat(dz),
        _flat(dx),
        *(_vector(v) for v in (mean, *coefficients)),
        sizes,
        channels_last,
        torch.get_num_threads(),
    )
    return dx
