"""Small building blocks of BNN architectures: shifts, RPReLU, channel shuffle, activations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from onebit.errors import ConfigError, UnknownNameError
from onebit.quant import fused


class LearnableBias(nn.Module):
    """x + b_c: a learnable per-channel shift, initialised to 0.

    Source: Liu et al. 2020 (ReActNet), official ``LearnableBias``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class _FusedRPReLU(torch.autograd.Function):
    """:func:`rprelu` as one fused CPU pass each way (:func:`onebit.quant.fused.rprelu_forward`);
    the shifts are per-channel tensors (zeros for a plain PReLU)."""

    @staticmethod
    def forward(ctx, x, shift_in, slope, shift_out):
        x = fused.dense(x)
        ctx.save_for_backward(x, shift_in, slope)
        return fused.rprelu_forward(x, shift_in, slope, shift_out)

    @staticmethod
    def backward(ctx, grad):
        x, shift_in, slope = ctx.saved_tensors
        dx, d_in, d_slope, d_out = fused.rprelu_backward(x, grad, shift_in, slope)
        return dx, d_in.view(shift_in.shape), d_slope.view(slope.shape), d_out.view(shift_in.shape)


def _fusable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """The fused RPReLU takes ``x``: a float32 CPU tensor of 2+ dims (``fused.usable``) in a
    training step (autograd on: in eval and in traces the modules run one by one, so hooks and
    layer tables see them), with float32 per-channel parameters of C items."""
    return (
        torch.is_grad_enabled()
        and x.dtype == torch.float32
        and x.ndim >= 2
        and fused.usable(x)
        and all(p.dtype == torch.float32 and p.numel() == x.shape[1] for p in params)
    )


def rprelu(
    x: torch.Tensor,
    slope: torch.Tensor,
    shift_in: torch.Tensor | None = None,
    shift_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """PReLU_slope(x + shift_in) + shift_out, per channel (dim 1); a shift of None is 0.

    The shifts hold C items in any shape ((C,), or (1, C, 1, 1) as LearnableBias keeps them).
    On the CPU in a float32 training step: one fused pass forward and one backward
    (onebit.quant.fused), where PyTorch's chain takes three and six and its PReLU backward is
    slow (a 128x16x32x32 RPReLU forward + backward: 16.8 ms, fused 5.8 ms); elsewhere (CUDA,
    bfloat16, torch.compile, no autograd) the PyTorch operators. Both tested against each
    other.
    """
    zeros = None
    if shift_in is None or shift_out is None:
        zeros = slope.new_zeros(slope.numel())
    b1 = zeros if shift_in is None else shift_in
    b2 = zeros if shift_out is None else shift_out
    if _fusable(x, slope, b1, b2):
        return _FusedRPReLU.apply(x, b1, slope, b2)
    per_channel = (1, -1) + (1,) * (x.ndim - 2)
    if shift_in is not None:
        x = x + shift_in.reshape(per_channel)
    x = F.prelu(x, slope)
    return x if shift_out is None else x + shift_out.reshape(per_channel)


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, PReLU (slope init 0.25), shift: +b1_c -> PReLU -> +b2_c.

    Source: Liu et al. 2020 (ReActNet), official ``move12 -> prelu1 -> move13``.
    In a CPU training step the three run as one fused pass (:func:`rprelu`); otherwise module by
    module.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1, a, b2 = self.shift_in.bias, self.prelu.weight, self.shift_out.bias
        if _fusable(x, b1, a, b2):
            return _FusedRPReLU.apply(x, b1, a, b2)
        return self.shift_out(self.prelu(self.shift_in(x)))


class PReLU(nn.PReLU):
    """``nn.PReLU`` (per-channel slopes) whose CPU training step is :func:`rprelu`'s fused pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.numel() > 1 and x.ndim >= 2 and x.shape[1] == self.weight.numel():
            return rprelu(x, self.weight)
        return super().forward(x)


class _FusedAvgPool2(torch.autograd.Function):
    """``F.avg_pool2d(x, 2)`` of a contiguous float32 CPU tensor as one fused pass each way."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return fused.avgpool2_forward(x)

    @staticmethod
    def backward(ctx, grad):
        return fused.avgpool2_backward(grad, ctx.shape)


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, the same bits. On the CPU in float32 an NCHW tensor (or a strided
    view: copied once) takes one fused pass each way: PyTorch's NCHW kernel takes ~8x its
    channels-last one (128x32x32x32: 9 vs 1.1 ms), which channels-last tensors keep."""
    if (
        x.ndim == 4
        and x.dtype == torch.float32
        and fused.usable(x)
        and x.shape[2] >= 2
        and x.shape[3] >= 2
        and (x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last))
    ):
        return _FusedAvgPool2.apply(x.contiguous())
    return F.avg_pool2d(x, 2)


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` whose 2x2 stride-2 case (the downsampling shortcuts) is
    :func:`avg_pool2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and not self.ceil_mode
            and self.divisor_override is None
        ):
            return avg_pool2(x)
        return super().forward(x)


@torch.fx.wrap
def interleave_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of one shape (N, C, ...) interleaved channel by channel, (N, len * C, ...): the
    channel shuffle of their concatenation in one copy. A torch.fx trace keeps it as one call
    (onebit.deploy.export: concat + channel_shuffle)."""
    # a cat of the tensors unsqueezed at dim 2, not torch.stack(dim=2): the same values, and
    # on the CPU stack takes a slow path here (a 128x16x32x32 pair: 4.7 vs 1.9 ms)
    return torch.cat([t.unsqueeze(2) for t in tensors], dim=2).flatten(1, 2)


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

    def cat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(tensors, dim=1))`` in one copy instead of two: ``groups``
        tensors of one shape, interleaved channel by channel (stacked on a new dim 2)."""
        if len(tensors) != self.groups:
            raise ValueError(f"ChannelShuffle({self.groups}).cat takes {self.groups} tensors")
        return interleave_channels(list(tensors))

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
        x = avg_pool2(x) if self.mode == "avgpool" else x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, pad={self.pad}"


class LeakyClip(nn.Module):
    """Clip to [-1, 1] with slope 0.1 outside: x on [-1, 1], 0.1 x -+ 0.9 beyond.

    Source: Liu et al. 2018 (Bi-Real Net), the pre-training nonlinearity of the Caffe recipe
    and official PyTorch ``Leakyclip`` before the first (real-valued) conv of Bi-Real-50.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clipped = x.clamp(-1.0, 1.0)
        return clipped + 0.1 * (x - clipped)


class LearnedRescale(nn.Module):
    """A learned output scale factorised over height, width and channels:
    out = x * (s_h x s_w x s_c), each factor a learnable vector initialised to 1.

    The factors are sized for one feature-map size (``height`` x ``width``).
    Source: Bulat & Tzimiropoulos 2019 (XNOR-Net++); Martinez et al. 2020 (Real-to-Binary
    strong baseline), larq/zoo ``LearnedRescaleLayer``.
    """

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.scale_h = nn.Parameter(torch.ones(1, 1, height, 1))
        self.scale_w = nn.Parameter(torch.ones(1, 1, 1, width))
        self.scale_c = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.scale_h.shape[2], self.scale_w.shape[3])
        if tuple(x.shape[2:]) != expected:
            raise ConfigError(
                f"LearnedRescale was built for {expected[0]}x{expected[1]} feature maps but got "
                f"{x.shape[2]}x{x.shape[3]}: build the model with the input size you feed it "
                "(option input_hw)"
            )
        return x * (self.scale_h * self.scale_w * self.scale_c)


class ChannelGate(nn.Module):
    """Real-to-Binary's data-driven channel re-scaling (squeeze-and-excitation style):
    s = sigmoid(W2 relu(W1 GAP(x))), W1: C_in -> C_in / r, W2: C_in / r -> C_out, no biases.

    ``forward(x)`` returns s as (N, C_out, 1, 1); x is the real-valued input of the binary
    conv whose output s multiplies.
    Source: Martinez et al. 2020, Sec. 4.3; larq/zoo ``RealToBinNetFactory``.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 8):
        super().__init__()
        self.reduce = nn.Linear(in_channels, in_channels // reduction, bias=False)
        self.expand = nn.Linear(in_channels // reduction, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(z))))
        return s[:, :, None, None]


# The BatchNorm layers, by their public classes (torch's common base class is private).
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

ACTIVATION_LAYERS = {
    "hardtanh": lambda c: nn.Hardtanh(),
    "relu": lambda c: nn.ReLU(),
    "prelu": lambda c: PReLU(c),
    "leakyclip": lambda c: LeakyClip(),
    "rprelu": RPReLU,
    "identity": lambda c: nn.Identity(),
    "none": lambda c: nn.Identity(),
}


def make_activation(name: str, channels: int) -> nn.Module:
    """The activation layer called ``name`` for ``channels`` channels (see ACTIVATION_LAYERS)."""
    if name not in ACTIVATION_LAYERS:
        raise UnknownNameError("activation", name, ACTIVATION_LAYERS)
    return ACTIVATION_LAYERS[name](channels)
