"""Every binarizer's forward and backward against its formula (shared/REFERENCES.md).

Backward passes are checked two ways: against hand-written formulas at chosen points, and
against a smooth twin whose exact derivative is the surrogate (hardtanh for the clipped STE,
the quadratic ApproxSign for Bi-Real/ReCU, k tanh(t x) for EDE, the identity for ReCU weights),
differentiated by autograd in float64.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import onebit
from onebit import quant
from onebit.errors import UnknownNameError
from onebit.nn import BinaryConv2d
from onebit.nn.layers import make_activation
from onebit.quant import EdeConfig, QuantConfig, set_schedule_state

POINTS = torch.tensor(
    [-2.0, -1.0, -0.75, -0.5, -0.1, 0.0, 0.1, 0.5, 0.75, 1.0, 1.5], dtype=torch.float64
)


@pytest.fixture(autouse=True)
def _float64():
    """float64 by default in this module only (other modules train in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def grad_of(fn, x, **state):
    x = x.clone().requires_grad_(True)
    g = torch.linspace(0.5, 1.5, x.numel()).reshape(x.shape)
    (fn(x, **state) * g).sum().backward()
    return x.grad / g


def approx_sign_twin(x):
    """Antiderivative of max(0, 2 - 2|x|): 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), +-1 beyond."""
    inner = torch.where(x < 0, 2 * x + x**2, 2 * x - x**2)
    return torch.where(x.abs() >= 1, torch.sign(x), inner)


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-3.0, -0.0, 0.0, 2.0])
    assert quant.sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["ste", "approx_sign", "ede", "recu", "rsign"])
def test_activation_forward_is_sign(name):
    x = torch.randn(4, 3, 5, 5)
    x[0, 0, 0, 0] = 0.0
    assert torch.equal(quant.act(name)(x), quant.sign(x))


def test_ste_backward_is_hardtanh_clip():
    expected = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert grad_of(quant.act("ste"), POINTS).tolist() == expected


def test_approx_sign_backward_hand_values():
    # 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere
    expected = [0, 0, 0.5, 1.0, 1.8, 2.0, 1.8, 1.0, 0.5, 0, 0]
    assert torch.allclose(grad_of(quant.act("approx_sign"), POINTS), torch.tensor(expected))


@pytest.mark.parametrize("t,k", [(0.01, 100.0), (1.0, 1.0), (9.77, 1.0)])
def test_ede_backward_formula(t, k):
    expected = k * t * (1 - torch.tanh(t * POINTS) ** 2)
    assert torch.allclose(grad_of(quant.act("ede"), POINTS, t=t, k=k), expected)
    twin = grad_of(lambda x: k * torch.tanh(t * x), POINTS)
    assert torch.allclose(grad_of(quant.act("ede"), POINTS, t=t, k=k), twin)


def test_ede_accepts_tensor_state():
    t, k = torch.tensor(0.5), torch.tensor(2.0)
    expected = 2.0 * 0.5 * (1 - torch.tanh(0.5 * POINTS) ** 2)
    assert torch.allclose(grad_of(quant.act("ede"), POINTS, t=t, k=k), expected)


def test_recu_activation_backward_through_standardisation():
    x = torch.randn(3, 4, 5, 5) * 0.7

    def twin(x):
        std = torch.sqrt(x.var(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return approx_sign_twin(x / std)

    assert torch.allclose(grad_of(quant.act("recu"), x), grad_of(twin, x))
    # not in training: no standardisation, plain approx-sign derivative
    assert torch.allclose(
        grad_of(quant.act("recu"), POINTS, training=False), grad_of(approx_sign_twin, POINTS)
    )


def test_rsign_shifts_by_per_channel_bias_and_grads_reach_it():
    x = torch.randn(2, 3, 4, 4)
    bias = torch.tensor([0.3, -0.2, 5.0], requires_grad=True)
    out = quant.act("rsign")(x, bias=bias)
    assert torch.equal(out, quant.sign(x + bias.view(1, 3, 1, 1)))
    out.sum().backward()
    shifted = x + bias.detach().view(1, 3, 1, 1)
    expected = (2 - 2 * shifted.abs()).clamp(min=0).sum(dim=(0, 2, 3))
    assert torch.allclose(bias.grad, expected)
    assert bias.grad[2] == 0  # every input is pushed past +1: no gradient


def test_weight_sign_is_unscaled_clipped_ste():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(quant.weight("sign")(w), quant.sign(w))
    assert torch.equal(grad_of(quant.weight("sign"), w), (w.abs() <= 1).double())


def test_xnor_scale_is_mean_abs_per_filter_and_grad_is_unscaled_clip():
    w = torch.randn(4, 3, 3, 3) * 1.3
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(quant.weight("xnor")(w), alpha * quant.sign(w))
    assert torch.equal(grad_of(quant.weight("xnor"), w), (w.abs() <= 1).double())


@pytest.mark.parametrize("kind, name", [("act", "ste"), ("weight", "sign"), ("weight", "xnor")])
def test_clipped_ste_range_is_quant_ste_clip(kind, name):
    # mmcls' STE clips the gradient at 1.25 (binary_functions.py); onebit's default is 1
    fn = getattr(quant, kind)(name)
    x = torch.linspace(-2, 2, 81).reshape(1, 81) * torch.ones(3, 1)
    assert torch.equal(grad_of(fn, x, clip=1.25), (x.abs() <= 1.25).double())
    assert torch.equal(grad_of(fn, x), (x.abs() <= 1).double())
    assert torch.equal(fn(x, clip=1.25), fn(x))
    # set on every layer by the schedule from quant.ste_clip, read without a buffer
    layer = BinaryConv2d(3, 4, 3, act="ste", weight="sign")
    set_schedule_state(layer, 0, 1, QuantConfig(ste_clip=1.25))
    assert layer.quant_constants == {"act": {"clip": 1.25}, "weight": {"clip": 1.25}}
    assert "clip" not in dict(layer.named_buffers())


def test_magnitude_aware_grad_is_the_clip_scaled_by_the_filter_magnitude():
    # Bi-Real Eq. 7 / larq MagnitudeAwareSign: forward as xnor, backward g * alpha_c * 1{|W|<=1}
    w = torch.randn(4, 3, 3, 3) * 1.3
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(quant.weight("magnitude_aware")(w), alpha * quant.sign(w))
    expected = (w.abs() <= 1).double() * alpha.double()
    assert torch.allclose(grad_of(quant.weight("magnitude_aware"), w), expected)


def test_xnor_exact_grad_has_the_term_through_alpha():
    """REFERENCES, XNOR-Net: the exact gradient of alpha_c sign(W_c), alpha_c = mean|W_c|:
    alpha_c g 1{|W| <= 1} + sign(W) / n sum_c(g sign(W)); checked against the hand formula
    and numerically against the surrogate it differentiates (sign as its clip on |W| <= 1)."""
    w = torch.randn(4, 3, 3, 3) * 1.3
    n = 27
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(quant.weight("xnor_exact")(w), alpha * quant.sign(w))
    g = torch.randn(4, 3, 3, 3)
    x = w.clone().requires_grad_(True)
    (quant.weight("xnor_exact")(x) * g).sum().backward()
    s = quant.sign(w)
    expected = alpha * g * (w.abs() <= 1) + s / n * (g * s).sum(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x.grad, expected)

    # numerically (central differences): the STE's product rule, alpha moving with W around
    # the fixed signs, the signs moving as their clip around the fixed alpha
    def surrogate(v):
        clip = torch.where(v.abs() <= 1, v, v.sign())
        return ((v.abs().mean(dim=(1, 2, 3), keepdim=True) * s + alpha * clip) * g).sum()

    flat, eps = w.flatten(), 1e-6
    numeric = torch.stack(
        [
            (surrogate((flat + eps * e).view_as(w)) - surrogate((flat - eps * e).view_as(w)))
            / (2 * eps)
            for e in torch.eye(flat.numel())
        ]
    ).view_as(w)
    assert torch.allclose(x.grad, numeric, atol=1e-6)
    # xnor (detached alpha) keeps only the clip: the two differ by the alpha terms
    assert not torch.allclose(x.grad, grad_of(quant.weight("xnor"), w) * g)


def test_irnet_libra_pb_forward_and_backward():
    w = torch.randn(5, 2, 3, 3) * 0.2 + 0.05
    t, k = 0.3, 1 / 0.3
    flat = w.reshape(5, -1).numpy()
    wb = (flat - flat.mean(1, keepdims=True)) / flat.std(1, ddof=1, keepdims=True)
    s = 2.0 ** np.round(np.log2(np.abs(wb).mean(1, keepdims=True)))
    expected = (s * np.where(wb >= 0, 1.0, -1.0)).reshape(w.shape)
    assert np.allclose(quant.weight("irnet")(w, t=t, k=k).numpy(), expected)
    # random filters have mean |Wb| ~ 0.78, s = 1: the power-of-two rounding shows on chosen ones.
    # one-hot (9 values): Wb = -1/3 (x8), 8/3 (std 1/3), mean |Wb| = 16/27, 2^round(-0.76) = 1/2;
    # +-1 alternating then 0: Wb = W (std 1), mean |Wb| = 8/9, 2^round(-0.17) = 1
    filters = torch.tensor([[0, 0, 0, 0, 1, 0, 0, 0, 0], [1, -1, 1, -1, 1, -1, 1, -1, 0]])
    hand = [[-0.5] * 4 + [0.5] + [-0.5] * 4, [1, -1, 1, -1, 1, -1, 1, -1, 1]]
    out = quant.weight("irnet")(filters.double().reshape(2, 1, 3, 3), t=t, k=k)
    assert out.reshape(2, 9).tolist() == hand
    # standardised per filter: a positive scale and a shift of each filter change nothing
    moved = w * torch.tensor([3.0, 0.5, 1.0, 7.0, 2.0]).reshape(5, 1, 1, 1) - 0.4
    assert torch.equal(quant.weight("irnet")(moved, t=t, k=k), quant.weight("irnet")(w, t=t, k=k))

    def twin(w):
        dims = (1, 2, 3)
        wb = w - w.mean(dims, keepdim=True)
        wb = wb / wb.std(dims, keepdim=True)
        scale = torch.exp2(torch.round(torch.log2(wb.detach().abs().mean(dims, keepdim=True))))
        return scale * k * torch.tanh(t * wb)

    assert torch.allclose(grad_of(quant.weight("irnet"), w, t=t, k=k), grad_of(twin, w))


def recu_reference(w: np.ndarray, tau: float):
    """ReCU's official BinarizeConv2d weight path, line by line, in float64 numpy."""
    n = w.shape[0]
    flat = w.reshape(n, -1)
    w0 = flat - flat.mean(1, keepdims=True)
    w1 = w0 / (np.sqrt(w0.var(1, ddof=1, keepdims=True) + 1e-5) / 2 / np.sqrt(2))
    q = -np.abs(w1).mean() * np.log(2 - 2 * tau)
    w2 = np.clip(w1, -q, q)
    return w1.reshape(w.shape), q, w2.reshape(w.shape)


@pytest.mark.parametrize("tau", [0.85, 0.9029, 0.99])
def test_recu_weight_clamp_matches_official(tau):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * 0.1
    w1, q, w2 = recu_reference(w.numpy(), tau)
    assert torch.equal(quant.weight("recu")(w, tau=tau), quant.sign(torch.from_numpy(w2)))
    # the clamp cuts exactly the weights beyond Q; its gradient is the identity inside
    # w1 is ~N(0, 8), so Q = E|w1| ln(1 / (2 - 2 tau)) clamps 2 (1 - Phi(Q / sqrt 8)) of them
    z = math.sqrt(2 / math.pi) * -math.log(2 - 2 * tau)
    expected = math.erfc(z / math.sqrt(2))
    assert (np.abs(w1) > q).mean() == pytest.approx(expected, abs=0.06)

    def twin(w):
        dims = (1, 2, 3)
        w0 = w - w.mean(dims, keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var(dims, keepdim=True) + 1e-5) / (2 * math.sqrt(2)))
        return torch.clamp(w1, -q, q)

    assert torch.allclose(grad_of(quant.weight("recu"), w, tau=tau), grad_of(twin, w))


def test_recu_clamp_value_for_known_input():
    # For a layer whose standardised weights have mean |w1| = m, Q = -m ln(2 - 2 tau).
    w = torch.tensor([[-3.0, -1.0, 1.0, 3.0]]).reshape(1, 4, 1, 1)
    w1, q, _ = recu_reference(w.numpy(), 0.85)
    std = math.sqrt(20 / 3 + 1e-5)  # unbiased var of (-3, -1, 1, 3) is 20/3
    m = (3 + 1 + 1 + 3) / 4 / (std / (2 * math.sqrt(2)))
    assert q == pytest.approx(-m * math.log(0.3))
    assert q == pytest.approx(2.6378, abs=1e-4)  # 2 / 0.91287 * 1.20397
    # w1 = +-3.286, +-1.095: the outer two are clamped to +-Q, the inner two pass
    assert (abs(w1.ravel()) > q).tolist() == [True, False, False, True]


def test_recu_tau_one_means_no_clamp():
    # one spike per filter of 18: var(W0) = 1/18, so W1 ~ 12 W0: 34/3 at the spike, -2/3 elsewhere
    # and mean|W1| = 68/54; tau = 0.99 clamps the spike at Q = 1.26 ln 50 = 4.93, but tau = 1
    # gives Q = -mean|W1| ln 0 = inf: W2 = W1, the gradient is the standardisation's alone
    w = torch.zeros(3, 2, 3, 3)
    w[:, 0, 1, 1] = torch.tensor([1.0, 2.0, 0.5])

    def standardised(w):
        dims = (1, 2, 3)
        w0 = w - w.mean(dims, keepdim=True)
        return w0 / (torch.sqrt(w0.var(dims, keepdim=True) + 1e-5) / (2 * math.sqrt(2)))

    assert standardised(w)[:, 0, 1, 1].tolist() == pytest.approx([34 / 3] * 3, rel=1e-3)
    unclamped = grad_of(standardised, w)
    assert torch.allclose(grad_of(quant.weight("recu"), w, tau=1.0), unclamped)
    assert not torch.allclose(grad_of(quant.weight("recu"), w, tau=0.99), unclamped)


@pytest.mark.parametrize(
    "epoch,t,k",
    [(0, 1e-3, 1e3), (100, 1e-2, 1e2), (300, 1.0, 1.0), (399, 10**0.99, 1.0)],
)
def test_ede_schedule_official_cifar_values(epoch, t, k):
    # IR-Net CIFAR trainer: T_min 1e-3, T_max 10, 400 epochs
    got_t, got_k = quant.ede_schedule(epoch, 400, 1e-3, 10.0)
    assert got_t == pytest.approx(t)
    assert got_k == pytest.approx(k)


@pytest.mark.parametrize("epoch,tau", [(0, 0.85), (300, 0.9028553), (599, 0.9896312), (600, 0.99)])
def test_tau_schedule_official_values(epoch, tau):
    assert quant.tau_schedule(epoch, 600, 0.85, 0.99) == pytest.approx(tau, abs=1e-6)
    # ReCU's cpt_tau, in its own float32 form: A * e^(epoch / E) + B
    a = torch.tensor(np.e, dtype=torch.float32)
    big_a = (torch.tensor(0.99) - torch.tensor(0.85)) / (a - 1)
    official = big_a * torch.pow(a, epoch / 600) + (torch.tensor(0.85) - big_a)
    assert quant.tau_schedule(epoch, 600, 0.85, 0.99) == pytest.approx(official.item(), abs=1e-6)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="approx_sign"):
        quant.act("aprox_sign")
    with pytest.raises(
        UnknownNameError,
        match="weight binarizers: irnet, magnitude_aware, recu, sign, xnor, xnor_exact",
    ):
        quant.weight("nope")
    with pytest.raises(UnknownNameError, match="bireal"):
        quant.get_method("birael")


def test_every_registered_binarizer_has_a_docstring_with_formula_and_source():
    for spec in [*quant.ACTIVATIONS.values(), *quant.WEIGHTS.values()]:
        doc = spec.fn.__doc__
        assert "forward" in doc and "backward" in doc and "Source" in doc, spec.name


def test_set_schedule_state_fills_buffers_and_reports_values():
    m = onebit.create_model("resnet20", method="irnet", in_chans=1)
    used = quant.set_schedule_state(m, 100, 400, QuantConfig(ede=EdeConfig(1e-3, 10.0)))
    assert used == pytest.approx({"ede_t": 1e-2, "ede_k": 1e2})
    layers = [x for x in m.modules() if isinstance(x, onebit.nn.BinaryConv2d)]
    assert len(layers) == 18
    assert all(x.t.item() == pytest.approx(1e-2) and x.k.item() == 100 for x in layers)
    r = onebit.create_model("resnet20", method="recu")
    assert quant.set_schedule_state(r, 300, 600) == pytest.approx({"tau": 0.9028553})
    assert onebit.quant.set_schedule_state(onebit.create_model("resnet20", method="fp"), 1, 2) == {}


def test_binary_conv_equals_conv_of_binarized_operands():
    torch.manual_seed(0)
    layer = onebit.nn.BinaryConv2d(3, 5, 3, padding=1, act="ste", weight="xnor")
    x = torch.randn(2, 3, 6, 6)
    alpha = layer.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = F.conv2d(quant.sign(x), alpha * quant.sign(layer.weight), padding=1)
    assert torch.allclose(layer(x), expected)


def test_binary_layers_with_learned_scale_and_bits():
    conv = onebit.nn.BinaryConv2d(4, 6, 3, act="recu", weight="recu")
    assert conv.alpha.shape == (6, 1, 1) and ((conv.alpha >= 0) & (conv.alpha < 1)).all()
    assert conv.bits == "1w1a"
    lin = onebit.nn.BinaryLinear(4, 3, act=None, weight="xnor")
    assert lin.bits == "1w32a" and lin.alpha is None
    x = torch.randn(5, 4)
    assert torch.allclose(lin(x), F.linear(x, lin.binary_weight(), lin.bias))
    rs = onebit.nn.BinaryConv2d(4, 6, 1, act="rsign", weight="xnor")
    assert rs.act_bias.shape == (4,)


@pytest.mark.parametrize("act", sorted(quant.ACTIVATIONS))
@pytest.mark.parametrize("weight", sorted(quant.WEIGHTS))
def test_binary_conv_forward_has_no_host_sync(act, weight):
    """A full-graph compile fails on any graph break, which .item() / .cpu() would cause."""
    torch._dynamo.reset()
    layer = onebit.nn.BinaryConv2d(4, 4, 3, padding=1, act=act, weight=weight).float()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    x = torch.randn(2, 4, 5, 5, dtype=torch.float32)
    # eager may take the exact bf16 convolution (onebit.nn.exact_conv), compiled float32's:
    # equal within float32 rounding of sums of +-s (absolute, near 0)
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


def test_sign_of_zero_and_negative_zero_is_plus_one():
    x = torch.tensor([-0.0, 0.0, -1e-4, 1e-4, -3.0, float("inf"), -float("inf")])
    assert quant.sign(x).tolist() == [1, 1, -1, 1, -1, 1, -1]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert quant.sign(x.to(dtype)).dtype == dtype
        assert quant.sign(x.to(dtype)).tolist() == quant.sign(x).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recu_activation_fused_backward_in_lower_precision(dtype):
    """The fused pass in float32 / bfloat16 (autocast), channels-last input, random upstream
    gradient: equal to the float64 autograd graph of x / std -> approx-sign within rounding."""
    x = (torch.randn(4, 6, 5, 5) * 0.7 + 0.2).to(memory_format=torch.channels_last)
    g = torch.randn_like(x)

    def reference(x):
        std = torch.sqrt(x.var(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return approx_sign_twin(x / std)

    x64 = x.clone().requires_grad_(True)
    (reference(x64) * g).sum().backward()
    low = x.to(dtype).requires_grad_(True)
    out = quant.act("recu")(low)
    (out * g.to(dtype)).sum().backward()
    assert out.dtype == dtype and torch.equal(out.double(), quant.sign(x))
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert torch.allclose(low.grad.double(), x64.grad, atol=tol, rtol=tol)


def _forward_backward(fn, x, g, **state):
    x = x.clone().requires_grad_(True)
    out = fn(x, **state)
    (out * g).sum().backward()
    return out.detach(), x.grad


@pytest.mark.skipif(onebit.quant.fused._fused is None, reason="C extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "channel-slice"])
@pytest.mark.parametrize(
    "kind,name",
    [("act", n) for n in quant.ACTIVATIONS] + [("weight", n) for n in quant.WEIGHTS],
)
def test_fused_kernels_equal_the_pytorch_formulas(kind, name, layout, dtype, monkeypatch):
    """Every binarizer on the CPU, float32 and bfloat16 (autocast's type): forward identical
    with the fused C passes and with the PyTorch operators. Backward: in float32 equal to
    float32 rounding; in bfloat16 the fused pass computes in float32 and rounds once, so it is
    within one bfloat16 step of the PyTorch formulas in float32 on the same inputs, and no
    further from them than the PyTorch operators in bfloat16 (which round after every op);
    binarizers without a fused backward give the PyTorch operators' gradient."""
    x = torch.randn(5, 8, 6, 6, dtype=torch.float32) * 1.3
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1.0])  # sign(+-0) = +1, |x| = 1 on the clip edge
    x = x.to(dtype)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    if layout == "channel-slice":  # FIRNet's active half: a strided view, copied once
        x = torch.cat([x, torch.randn_like(x)], dim=1)[:, :8]
        assert onebit.quant.fused.dense(x) is not x
    g = torch.randn(x.shape, dtype=torch.float32).to(dtype)
    fn = quant.act(name) if kind == "act" else quant.weight(name)
    state = {"bias": torch.zeros(8, dtype=dtype)} if name == "rsign" else {}
    assert onebit.quant.fused.usable(x)
    calls = []

    class Spy:  # records the C kernels called
        def __getattr__(self, kernel):
            calls.append(kernel)
            return getattr(real, kernel)

    real = onebit.quant.fused._fused
    monkeypatch.setattr(onebit.quant.fused, "_fused", Spy())
    fused_out, fused_grad = _forward_backward(fn, x, g, **state)
    assert calls  # the fused path ran (every binarizer's forward has a sign)
    monkeypatch.setattr(onebit.quant.fused, "_fused", real)
    monkeypatch.setattr(onebit.quant.fused, "enabled", False)
    torch_out, torch_grad = _forward_backward(fn, x, g, **state)
    assert fused_out.dtype == fused_grad.dtype == dtype
    assert torch.equal(fused_out, torch_out)
    if dtype == torch.float32:
        torch.testing.assert_close(fused_grad, torch_grad, rtol=1e-5, atol=1e-6)
        return
    if torch.equal(fused_grad, torch_grad):
        return  # a binarizer without a fused backward (EDE, ...): the same operators
    state32 = {k: v.float() for k, v in state.items()}
    _, exact = _forward_backward(fn, x.float(), g.float(), **state32)
    torch.testing.assert_close(fused_grad.float(), exact, rtol=2**-7, atol=1e-5)
    fused_error = (fused_grad.float() - exact).abs().sum()
    assert fused_error <= (torch_grad.float() - exact).abs().sum() + 1e-6


def _rprelu_reference(x, b1, a, b2):
    """RPReLU in float64 autograd: PReLU_a(x + b1) + b2 per channel."""
    z = x + b1.view(1, -1, 1, 1)
    a = a.view(1, -1, 1, 1)
    return torch.where(z > 0, z, a * z) + b2.view(1, -1, 1, 1)


@pytest.mark.skipif(onebit.quant.fused._fused is None, reason="C extension not built")
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("module", ["rprelu", "prelu"])
def test_fused_rprelu_equals_pytorch_and_the_float64_formula(module, threads, layout, monkeypatch):
    """RPReLU (and a per-channel PReLU) in a CPU float32 training step runs as one fused pass
    each way: the output is identical to the PyTorch modules', and the gradients of x, both
    shifts and the slopes equal the float64 formula's within float32 rounding. Planes of 1,600
    items cross the kernel's 1,024-item float blocks; some z = x + b1 are exactly 0 (slope side)."""
    torch.manual_seed(0)
    channels = 6
    layer = onebit.nn.RPReLU(channels) if module == "rprelu" else make_activation("prelu", channels)
    layer = layer.float()  # this module's default type is float64
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    params = dict(layer.named_parameters())
    b1 = params.get("shift_in.bias", torch.zeros(channels)).reshape(-1)
    b2 = params.get("shift_out.bias", torch.zeros(channels)).reshape(-1)
    a = params["prelu.weight" if module == "rprelu" else "weight"]
    x = torch.randn(3, channels, 40, 40, dtype=torch.float32)
    x[:, :, 0, :4] = -b1.detach().view(1, -1, 1)  # z = 0 exactly
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float32)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    def step():
        xi = x.clone().requires_grad_(True)
        layer.zero_grad()
        out = layer(xi)
        (out * g).sum().backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        return out, [xi.grad, *grads]

    fused_out, fused_grads = step()
    assert type(fused_out.grad_fn).__name__ == "_FusedRPReLUBackward"
    monkeypatch.setattr(onebit.quant.fused, "enabled", False)
    torch_out, torch_grads = step()
    assert type(torch_out.grad_fn).__name__ != "_FusedRPReLUBackward"
    assert torch.equal(fused_out, torch_out)

    x64 = x.double().requires_grad_(True)
    p64 = [t.detach().double().requires_grad_(True) for t in (b1, a, b2)]
    (_rprelu_reference(x64, *p64) * g.double()).sum().backward()
    exact = {"x": x64.grad, "b1": p64[0].grad, "a": p64[1].grad, "b2": p64[2].grad}
    names = ["x", "b1", "a", "b2"] if module == "rprelu" else ["x", "a"]
    for name, got, pytorch in zip(names, fused_grads, torch_grads, strict=True):
        want = exact[name].view(got.shape)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4, msg=name)
        # no further from float64 than PyTorch's own float32 chain (sums: 1e-4 slack)
        assert (got.double() - want).abs().max() <= (pytorch.double() - want).abs().max() + 1e-4


def test_rprelu_runs_module_by_module_outside_a_training_step():
    """Without autograd (layer tables, export traces, evaluation) RPReLU calls its three
    modules, so forward hooks and `onebit summary` see shift, PReLU, shift; a training step
    takes the fused pass."""
    layer = onebit.nn.RPReLU(4).float()
    seen = []
    for m in layer.children():
        m.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    with torch.no_grad():
        layer(torch.randn(2, 4, 3, 3, dtype=torch.float32))
    assert seen == ["LearnableBias", "PReLU", "LearnableBias"]
    if onebit.quant.fused._fused is not None:
        out = layer(torch.randn(2, 4, 3, 3, dtype=torch.float32, requires_grad=True))
        assert type(out.grad_fn).__name__ == "_FusedRPReLUBackward"


@pytest.mark.skipif(onebit.quant.fused._fused is None, reason="C extension not built")
@pytest.mark.parametrize("shape", [(4, 6, 8, 8), (3, 5, 7, 9), (2, 3, 2, 3)])
@pytest.mark.parametrize("layout", ["nchw", "channel-slice", "nhwc"])
def test_fused_avg_pool_is_pytorchs_bit_for_bit(shape, layout):
    """onebit.nn.AvgPool2d(2) (the downsampling shortcuts): the fused pass on NCHW tensors and
    channel slices, PyTorch's kernel on channels-last ones; outputs and input gradients
    identical to F.avg_pool2d's, odd sides (the last row / column dropped) included."""
    x = torch.randn(shape, dtype=torch.float32)
    if layout == "channel-slice":
        x = torch.cat([x, x + 1], dim=1)[:, : shape[1]]
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    pool = onebit.nn.AvgPool2d(2)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, want = pool(a), F.avg_pool2d(b, 2)
    g = torch.randn(want.shape, dtype=torch.float32)
    out.backward(g)
    want.backward(g)
    fused = type(out.grad_fn).__name__ == "_FusedAvgPool2Backward"
    assert fused == (layout != "nhwc" or x.is_contiguous())
    assert torch.equal(out, want) and torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(pool(x), F.avg_pool2d(x, 2))


def test_avg_pool_module_other_windows_are_nn_avg_pool():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float32)
    for args in [(3,), (2, 1), (2, 2, 1), (3, 2)]:
        pool = onebit.nn.AvgPool2d(*args)
        assert isinstance(pool, torch.nn.AvgPool2d)
        assert torch.equal(pool(x), torch.nn.AvgPool2d(*args)(x))


@pytest.mark.parametrize("grad", [True, False])
def test_rprelu_function_shifts_are_per_channel_in_any_shape(grad):
    """onebit.nn.layers.rprelu with (C,) shifts: per channel (dim 1) on both paths, as the
    RPReLU module's (1, C, 1, 1) ones."""
    from onebit.nn.layers import rprelu

    x = torch.randn(2, 3, 4, 5, dtype=torch.float32, requires_grad=grad)
    a, b1, b2 = (torch.randn(3, dtype=torch.float32) for _ in range(3))
    want = _rprelu_reference(x.detach().double(), b1.double(), a.double(), b2.double())
    for shifts in [(b1, b2), (b1.view(1, 3, 1, 1), b2.view(1, 3, 1, 1))]:
        out = rprelu(x, a, *shifts)
        torch.testing.assert_close(out.double(), want)
