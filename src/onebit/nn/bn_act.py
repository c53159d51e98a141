"""act(bn(x) + shortcut), the end of nearly every BNN block, in two CPU passes each way.

PyTorch runs a block's BatchNorm, residual add and activation as separate operators: the
BatchNorm's statistics and its normalisation, the add, the activation forward; the
activation's backward and the BatchNorm's two backward passes; each a pass over the whole
activation. :func:`bn_act` computes the same with the C kernels of onebit.quant.fused
(binarize.c): forward, the batch statistics, then normalise + add + activate in one pass;
backward, the activation's gradient with the BatchNorm's per-channel sums, then the input
gradient. On one thread a 128x16x32x32 BatchNorm + add + hardtanh, forward and backward, takes
7.1 ms against PyTorch's 10.3 (eval forward 1.0 against 2.1; even at 128x64x8x8), and a
ResNet-20 training step runs 1.04-1.15x faster (benchmarks/train_speed.py --bn-act).

It takes a float32 CPU tensor of 4 dims, an ``nn.BatchNorm2d`` that keeps running statistics
(train mode: batch statistics, and the running ones updated as PyTorch does; eval mode: the
running ones), and an activation that is None, ``nn.Identity``, ``nn.ReLU``,
``nn.Hardtanh`` (``nn.ReLU6``), a per-channel PReLU or onebit's RPReLU. Everywhere else
(CUDA, bfloat16 or autocast, torch.compile, a torch.fx or torch.jit trace, a forward or
backward hook on the BatchNorm or the activation, another activation) it calls the modules
one by one, so traces, hooks and layer tables see them as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module

from onebit.nn.layers import PReLU, RPReLU
from onebit.quant import fused

# Set to False to always run the modules one by one (benchmarks and tests compare).
enabled = True

_INF = float("inf")


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _no_hooks(*modules: nn.Module | None) -> bool:
    """No forward or backward hook anywhere on ``modules`` (and their children), nor a
    global one."""
    if any(getattr(_module, f"_global{name}", None) for name in _HOOKS):
        return False
    return not any(
        getattr(m, name)
        for top in modules
        if top is not None
        for m in top.modules()
        for name in _HOOKS
    )


def _activation(
    act: nn.Module | None, channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float] | None:
    """``act`` as the kernels' (b1, a, b2, lo, hi) (binarize.c), the tensors of C items or
    the module's own parameters; None where the kernels do not compute it."""
    zero = torch.zeros(channels)
    one = torch.ones(channels)
    if act is None or type(act) is nn.Identity:
        return zero, one, zero, -_INF, _INF
    if type(act) is nn.ReLU:
        return zero, one, zero, 0.0, _INF
    if type(act) in (nn.Hardtanh, nn.ReLU6):
        return zero, one, zero, float(act.min_val), float(act.max_val)
    if type(act) is RPReLU:
        b1, a, b2 = act.shift_in.bias, act.prelu.weight, act.shift_out.bias
        if type(act.prelu) is not nn.PReLU or a.numel() != channels or not _float32(b1, a, b2):
            return None
        return b1, a, b2, -_INF, _INF
    if type(act) in (PReLU, nn.PReLU) and act.weight.numel() == channels and _float32(act.weight):
        return zero, act.weight, zero, -_INF, _INF
    return None


def _float32(*tensors: torch.Tensor) -> bool:
    """All float32 (a float64 parameter would promote PyTorch's output to float64)."""
    return all(t.dtype == torch.float32 for t in tensors)


def _fusable(bn: nn.Module, x: object, shortcut: object, act: nn.Module | None) -> bool:
    return (
        enabled
        and not torch.jit.is_tracing()  # torch.jit.trace, the TorchScript ONNX exporter
        and isinstance(x, torch.Tensor)  # not a torch.fx Proxy
        and (shortcut is None or isinstance(shortcut, torch.Tensor))
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and x.dtype == torch.float32
        and x.ndim == 4
        and x.shape[1] == bn.num_features
        and fused.usable(x)
        and not torch.is_autocast_enabled("cpu")
        and (not bn.training or x.numel() > x.shape[1])  # PyTorch's error for 1 value
        and (bn.weight is None or _float32(bn.weight, bn.bias))
        and (
            shortcut is None
            or (
                shortcut.shape == x.shape
                and shortcut.dtype == torch.float32
                and shortcut.device == x.device
            )
        )
        and _no_hooks(bn, act)
    )


def bn_act(
    bn: nn.BatchNorm2d,
    x: torch.Tensor,
    shortcut: torch.Tensor | None = None,
    act: nn.Module | None = None,
) -> torch.Tensor:
    """``act(bn(x) + shortcut)`` (no add for a shortcut of None, no activation for None):
    the same values and gradients, and the same running statistics, in two fused passes each
    way where the module docstring says, else the modules one by one."""
    params = _activation(act, x.shape[1]) if _fusable(bn, x, shortcut, act) else None
    if params is None:
        y = bn(x)
        if shortcut is not None:
            y = y + shortcut
        return y if act is None else act(y)
    x = fused.dense(x)
    with torch.no_grad():
        if bn.training:
            mean, var = fused.bn_stats(x)
            _update_running_stats(bn, mean, var, x.numel() // x.shape[1])
        else:
            mean, var = bn.running_mean.double(), bn.running_var.double()
        invstd = (var + bn.eps).rsqrt()
    return _BnAct.apply(x, shortcut, bn.weight, bn.bias, *params, mean.float(), invstd, bn.training)


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int):
    """What nn.BatchNorm2d's training forward does to its buffers (momentum None: a
    cumulative average over num_batches_tracked)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (n / (n - 1))
    for buffer, value in ((bn.running_mean, mean), (bn.running_var, unbiased)):
        buffer.copy_(buffer.double() * (1 - factor) + value * factor)


class _BnAct(torch.autograd.Function):
    """y = act((x - mean) invstd weight + bias + shortcut) with act = (b1, a, b2, lo, hi)
    (binarize.c); ``batch`` says mean and invstd are x's batch statistics (their gradient
    through x is then part of dx), else constants (eval mode)."""

    @staticmethod
    def forward(ctx, x, shortcut, weight, bias, b1, a, b2, lo, hi, mean, invstd, batch):
        channels = x.shape[1]
        w = torch.ones(channels, dtype=torch.float64) if weight is None else weight.double()
        b = torch.zeros(channels, dtype=torch.float64) if bias is None else bias.double()
        scale = w * invstd
        shift = (b - mean.double() * scale).float()
        scale = scale.float()
        act = (*(v.detach().reshape(-1).float() for v in (b1, a, b2)), lo, hi)
        y = fused.bn_act_forward(x, shortcut, scale, shift, act)
        ctx.save_for_backward(x, shortcut, mean)
        ctx.stats = (w, invstd, scale, shift, act, batch)
        ctx.shapes = (b1.shape, a.shape, b2.shape)  # of the activation's gradients
        return y

    @staticmethod
    @once_differentiable  # a second derivative (create_graph) is an error, not a wrong value
    def backward(ctx, grad):
        x, shortcut, mean = ctx.saved_tensors
        w, invstd, scale, shift, act, batch = ctx.stats
        b1_shape, a_shape, b2_shape = ctx.shapes
        needs = ctx.needs_input_grad
        dz, sums = fused.bn_act_backward(x, shortcut, grad, mean, scale, shift, act)
        s_dz, s_dzx, s_a, s_b2 = sums.unbind(0)
        dx = None
        if needs[0]:
            coef_a = w * invstd
            if batch:
                count = x.numel() // x.shape[1]
                coef_b = -coef_a * invstd * (s_dzx * invstd / count)
                coef_c = -coef_a * (s_dz / count)
            else:
                coef_b = coef_c = torch.zeros_like(coef_a)
            coefficients = (coef_a.float(), coef_b.float(), coef_c.float())
            dx = fused.bn_input_backward(x, dz, mean, coefficients)
        d_weight = (s_dzx * invstd).float() if needs[2] else None
        d_bias = s_dz.float() if needs[3] else None
        return (
            dx,
            dz if needs[1] else None,
            d_weight,
            d_bias,
            s_dz.float().view(b1_shape) if needs[4] else None,
            s_a.float().view(a_shape) if needs[5] else None,
            s_b2.float().view(b2_shape) if needs[6] else None,
            None,
            None,
            None,
            None,
            None,
        )
