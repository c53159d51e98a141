"""Bit packing and the xnor-popcount kernels against plain float convolution."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from onebit.deploy import PackedConv2d, available_kernels
from onebit.deploy.engine import _kernels
from onebit.deploy.format import LayerDesc
from onebit.deploy.packing import pack_bits, pack_weight, tail_mask, unpack_bits, unpack_weight

KERNELS = available_kernels()  # the C variants this CPU runs, then "reference"


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    length=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip(lead, length, seed):
    g = torch.Generator().manual_seed(seed)
    negative = torch.rand(*lead, length, generator=g) < 0.5
    words = pack_bits(negative)
    assert words.shape == (*lead, (length + 63) // 64) and words.dtype == torch.int64
    assert torch.equal(unpack_bits(words, length), negative)
    # the bits past the last element are 0, as the kernels and the file checks require
    assert not bool((words[..., -1] & tail_mask(length)).any())


def test_pack_bit_order():
    negative = torch.zeros(130, dtype=torch.bool)
    negative[[0, 63, 64, 129]] = True
    words = pack_bits(negative).tolist()
    assert words == [1 - 2**63, 1, 2]  # bit 63 is the sign bit of the int64 word
    assert tail_mask(130) == -(1 << 2) and tail_mask(128) == 0


@settings(max_examples=25, deadline=None)
@given(
    cout=st.integers(1, 9),
    cin=st.integers(1, 140),
    k=st.sampled_from([(1, 1), (3, 3), (1, 3)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_weight_layout(cout, cin, k, seed):
    w = torch.randn(cout, cin, *k, generator=torch.Generator().manual_seed(seed))
    words = pack_weight(w < 0)
    assert words.shape == (cout, *k, (cin + 63) // 64)
    assert torch.equal(unpack_weight(words, cin), w < 0)
    # reduction axis order (kh, kw, cin): tap (ky, kx) holds channel c at bit c
    ky, kx, c = k[0] - 1, k[1] - 1, cin - 1
    bit = (words[0, ky, kx, c // 64] >> (c % 64)) & 1
    assert bool(bit) == bool(w[0, c, ky, kx] < 0)


def _layer(cin, cout, k, stride, padding, dilation, act_bias, kernel, seed, kind="conv2d"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=g)
    desc = LayerDesc(
        name="layer",
        kind=kind,
        mode="packed",
        in_channels=cin,
        out_channels=cout,
        kernel_size=(k, k),
        stride=(stride, stride),
        padding=(padding, padding),
        dilation=(dilation, dilation),
        groups=1,
        act="ste",
        weight="xnor",
        act_bias=act_bias,
        bn=None,
    )
    scale, bias = torch.rand(cout, generator=g) + 0.1, torch.randn(cout, generator=g)
    threshold = torch.randn(cin, generator=g) * 0.3 if act_bias else None
    layer = PackedConv2d(desc, pack_weight(w < 0), scale, bias, threshold, kernel)
    return layer, w, scale, bias, threshold


def _float_conv(x, w, scale, bias, threshold, stride, padding, dilation):
    """The float model's computation: conv of the zero-padded sign(x + t) with sign(w)."""
    t = 0.0 if threshold is None else threshold.view(1, -1, 1, 1)
    signs = torch.where(x + t >= 0, 1.0, -1.0).double()
    dot = F.conv2d(signs, torch.where(w < 0, -1.0, 1.0).double(), None, stride, padding, dilation)
    return dot.float() * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=30, deadline=None)
@given(
    cin=st.sampled_from([1, 3, 16, 64, 65, 130]),
    cout=st.sampled_from([1, 8, 13]),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1]),
    dilation=st.sampled_from([1, 2]),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    batch=st.integers(1, 2),
    layout=st.sampled_from(["nchw", "nhwc", "strided"]),
    act_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_equals_float_conv(
    kernel, cin, cout, k, stride, padding, dilation, hw, batch, layout, act_bias, seed
):
    span = dilation * (k - 1) + 1
    h, w = (max(v, span - 2 * padding) for v in hw)
    layer, weight, scale, bias, threshold = _layer(
        cin, cout, k, stride, padding, dilation, act_bias, kernel, seed
    )
    x = torch.randn(batch, cin, h, w, generator=torch.Generator().manual_seed(seed + 1))
    x[x.abs() < 0.05] = 0.0  # exact zeros: sign(0) = +1 on every path
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=3)[..., ::2]
    out = layer(x)
    expected = _float_conv(x, weight, scale, bias, threshold, stride, padding, dilation)
    assert torch.equal(out, expected)  # integer dot, then the same two fp32 roundings
    if kernel != "reference":  # the output keeps the input's memory format
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_layer_any_leading_dims(kernel):
    layer, w, scale, bias, threshold = _layer(70, 5, 1, 1, 0, 1, True, kernel, 0, kind="linear")
    x = torch.randn(2, 3, 70)
    expected = (
        torch.where(x + threshold >= 0, 1.0, -1.0) @ torch.where(w[:, :, 0, 0] < 0, -1.0, 1.0).T
    )
    assert torch.equal(layer(x), expected * scale + bias)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_and_signed_zero_binarize_like_torch_sign(kernel):
    layer, w, scale, bias, _ = _layer(64, 8, 1, 1, 0, 1, False, kernel, 0)
    x = torch.tensor([float("nan"), -0.0, 0.0, -1e-30, 1e-30] * 13)[:64].view(1, 64, 1, 1)
    assert torch.equal(layer(x), _float_conv(x, w, scale, bias, None, 1, 0, 1))


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_variant_gives_identical_results(kernel):
    layer, *_ = _layer(96, 20, 3, 2, 1, 1, True, kernel, 3)
    reference, *_ = _layer(96, 20, 3, 2, 1, 1, True, "reference", 3)
    x = torch.randn(2, 96, 13, 11)
    assert torch.equal(layer(x), reference(x))


def test_kernel_rejects_buffers_of_the_wrong_size():
    geometry = (1, 4, 4, 64, 8, 3, 3, 1, 1, 1, 1, 1, 1)
    packed = np.zeros((1, 6, 6, 1), np.int64)
    weights = np.zeros((1, 9, 1, 8), np.int64)
    tapsum = np.zeros((1, 9, 8), np.int32)
    vec = np.zeros(8, np.float32)
    out = np.zeros((1, 8, 4, 4), np.float32)
    _kernels.conv(packed, weights, tapsum, vec, vec, out, False, geometry, 0, 1)
    with pytest.raises(ValueError, match="conv output"):
        _kernels.conv(packed, weights, tapsum, vec, vec, out[:, :4], False, geometry, 0, 1)
    with pytest.raises(ValueError, match="conv input"):
        _kernels.conv(packed[:, :5], weights, tapsum, vec, vec, out, False, geometry, 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        _kernels.conv(packed, weights, tapsum, vec, vec, out, False, (0, *geometry[1:]), 0, 1)
    with pytest.raises(ValueError, match="does not fit"):
        bad = (1, 1, 1, 64, 8, 3, 3, 1, 1, 0, 0, 1, 1)  # 3x3 kernel on an unpadded 1x1 input
        _kernels.conv(packed, weights, tapsum, vec, vec, out, False, bad, 0, 1)
    with pytest.raises(ValueError, match="variant"):
        _kernels.conv(packed, weights, tapsum, vec, vec, out, False, geometry, 7, 1)
    x = np.zeros((1, 64, 4, 4), np.float32)
    with pytest.raises(ValueError, match="pack output"):
        _kernels.pack(
            x, False, (1, 64, 4, 4), (1, 1), np.zeros(64, np.float32), packed[:, :5], 0, 1
        )
