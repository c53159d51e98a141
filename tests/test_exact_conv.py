"""The exact bfloat16 binary convolution of a CPU step (onebit.nn.exact_conv)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import onebit
from onebit.errors import ConfigError
from onebit.models import create_model
from onebit.nn import BinaryConv2d, exact_conv
from onebit.quant import fused

needs_bf16 = pytest.mark.skipif(
    fused._fused is None or not exact_conv._hardware(),
    reason="needs the C extension and a CPU with AVX512-BF16 or AMX (bf16 convolutions)",
)


def exact(size: int, taps: int) -> bool:
    return size * taps <= 256 or (size % 2 == 0 and size * taps <= 512)


@pytest.mark.parametrize("cin", [1, 3, 16, 28, 29, 32, 57, 63, 64, 128, 512])
@pytest.mark.parametrize("taps", [1, 9, 25, 49])
def test_chunks_cover_the_channels_and_keep_every_partial_sum_exact(cin, taps):
    parts = exact_conv.chunks(cin, taps)
    assert [lo for lo, _ in parts] == [0] + [hi for _, hi in parts[:-1]]
    assert parts[-1][1] == cin
    assert all(exact(hi - lo, taps) for lo, hi in parts)


def test_chunks_are_few_and_empty_where_one_channel_is_too_many():
    assert exact_conv.chunks(16, 9) == [(0, 16)]
    assert exact_conv.chunks(32, 9) == [(0, 32)]  # 288 even terms
    assert exact_conv.chunks(64, 9) == [(0, 32), (32, 64)]
    assert exact_conv.chunks(512, 1) == [(0, 512)]
    assert exact_conv.chunks(1, 600) == []


def test_weight_scale_is_the_magnitude_of_a_plus_minus_s_weight():
    w = torch.tensor([[1.5, -1.5, 1.5], [-0.25, -0.25, 0.25], [0.0, 0.0, 0.0]])
    assert torch.equal(exact_conv.weight_scale(w), torch.tensor([1.5, 0.25, 0.0]))
    w[1, 0] = -0.5
    assert exact_conv.weight_scale(w) is None
    w[1, 0] = float("nan")
    assert exact_conv.weight_scale(w) is None


def layer(cin, cout, k=3, stride=1, padding=1, act="recu", weight="recu", bias=False):
    torch.manual_seed(cin * 100 + cout)
    m = BinaryConv2d(cin, cout, k, stride, padding, bias=bias, act=act, weight=weight)
    if m.alpha is not None:  # ReCU's alpha starts in U[0, 1): give it signs and spread
        with torch.no_grad():
            m.alpha.uniform_(-2, 2)
    if bias:
        with torch.no_grad():
            m.bias.normal_()
    return m


def run(m, x, grad, on, monkeypatch):
    """(out, dx, grads of the parameters) with the exact path on or off; checks it ran."""
    monkeypatch.setattr(exact_conv, "enabled", on)
    calls = []
    apply = exact_conv._ExactConv.apply
    monkeypatch.setattr(
        exact_conv._ExactConv, "apply", lambda *a: calls.append(1) or apply(*a), raising=True
    )
    x = x.detach().clone().requires_grad_()
    m.zero_grad()
    out = m(x)
    out.backward(grad)
    assert bool(calls) == on
    return out.detach(), x.grad, [p.grad.clone() for p in m.parameters()]


CASES = [
    # cin, cout, kernel, stride, padding, act, weight, bias, layout
    (16, 16, 3, 1, 1, "recu", "recu", False, "nhwc"),
    (64, 32, 3, 1, 1, "approx_sign", "xnor", False, "nchw"),  # two chunks of 32
    (63, 40, 3, 2, 1, "ste", "irnet", True, "nhwc"),  # three chunks, a bias
    (32, 64, 1, 2, 0, "rsign", "sign", False, "nchw"),  # a 1x1 downsample
    (6, 8, 5, 1, 2, "ede", "magnitude_aware", False, "nchw"),
]


@needs_bf16
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[2]}-{c[5]}-{c[8]}")
def test_exact_conv_is_the_exact_sum_rounded_once_and_its_gradients_are_pytorchs(case, monkeypatch):
    cin, cout, k, stride, padding, act, weight, bias, layout = case
    m = layer(cin, cout, k, stride, padding, act, weight, bias)
    torch.manual_seed(1)
    x = torch.randn(4, cin, 10, 10)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = F.conv2d(x, m.weight, None, stride, padding).shape
    grad = torch.randn(shape)
    out, dx, grads = run(m, x, grad, True, monkeypatch)
    ref_out, ref_dx, ref_grads = run(m, x, grad, False, monkeypatch)
    # the exact value: +-s sums in float64 are exact (24-bit s times a 10-bit integer)
    with torch.no_grad():
        xb = m.binary_input(x).double()
        w, b = m.scaled_weight_and_bias()
        exact_out = F.conv2d(xb, w.double(), None, stride, padding).float()
        if b is not None:  # added after the one rounding, as float32's convolution adds it
            exact_out = exact_out + b.view(1, -1, 1, 1)
    assert out.dtype == torch.float32
    assert torch.equal(out, exact_out)
    assert (ref_out - exact_out).abs().max() <= (out - exact_out).abs().max() + 1e-4
    # the backward is PyTorch's float32 convolution backward, bit for bit
    assert torch.equal(dx, ref_dx)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.equal(g, r)


@needs_bf16
def test_a_partial_sum_bfloat16_cannot_hold_is_split(monkeypatch):
    # 64 channels, 3x3, inputs all +1, weights all +s but one: 574 at the centre, which
    # bfloat16 (steps of 4 above 512) rounds to 576 in a single convolution
    m = BinaryConv2d(64, 1, 3, padding=1, act="approx_sign", weight="sign")
    with torch.no_grad():
        m.weight.fill_(0.5)
        m.weight[0, 5, 1, 1] = -0.5
    x = torch.ones(1, 64, 3, 3)
    out, *_ = run(m, x, torch.ones(1, 1, 3, 3), True, monkeypatch)
    assert out[0, 0, 1, 1].item() == 574.0
    whole = F.conv2d(x.bfloat16(), m.binary_weight().detach().bfloat16(), padding=1)
    assert whole[0, 0, 1, 1].item() == 576.0  # what one chunk would have given


@pytest.mark.parametrize("why", ["real weight", "two magnitudes", "unsigned act", "autocast"])
def test_the_float32_convolution_runs_where_the_exact_one_cannot(why, monkeypatch):
    monkeypatch.setattr(exact_conv, "_hardware", lambda: True)
    calls = []
    monkeypatch.setattr(exact_conv._ExactConv, "apply", lambda *a: calls.append(a))
    act, weight = "approx_sign", "xnor"
    if why == "real weight":
        weight = None
    if why == "unsigned act":
        onebit.register_binarizer("act", "test_scaled_sign")(lambda x: 0.5 * torch.sign(x))
        act = "test_scaled_sign"
    try:
        m = BinaryConv2d(8, 8, 3, padding=1, act=act, weight=weight)
        if why == "two magnitudes":
            m.binary_weight = lambda: m.weight  # a weight binarizer that is not +-s_c
        x = torch.randn(2, 8, 6, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=why == "autocast"):
            out = m(x)
            ref = m._conv_forward(m.binary_input(x), *m.scaled_weight_and_bias())
    finally:
        if why == "unsigned act":
            onebit.quant.unregister_binarizer("act", "test_scaled_sign")
    assert not calls
    assert torch.equal(out, ref)


def test_signs_is_for_one_bit_activations():
    with pytest.raises(ConfigError, match="signs"):
        onebit.register_binarizer("weight", "test_signs_weight", signs=True)(torch.sign)
    assert all(
        onebit.quant.binarizer("act", n).signs
        for n in ("ste", "approx_sign", "ede", "recu", "rsign")
    )


@needs_bf16
@pytest.mark.parametrize("name", ["resnet20", "firnet20"])
def test_a_binary_network_trains_the_same_with_and_without_it(name, monkeypatch):
    """One step of a 1-bit network on and off: logits within float32 rounding, and the same
    updated weights to within what that rounding moves them."""
    results = {}
    for on in (True, False):
        monkeypatch.setattr(exact_conv, "enabled", on)
        torch.manual_seed(0)
        model = create_model(name, method="recu", bits="1w1a", num_classes=10, in_chans=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 1, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.arange(8) % 10
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            results[on] = (loss.detach(), model(x))
    assert torch.allclose(results[True][0], results[False][0], rtol=1e-5)
    assert torch.allclose(results[True][1], results[False][1], rtol=1e-3, atol=1e-3)
