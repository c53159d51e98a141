"""act(bn(x) + shortcut) in fused CPU passes (onebit.nn.bn_act) against the modules."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

from onebit.models import create_model
from onebit.nn import LeakyClip, RPReLU, bn_act, make_activation
from onebit.quant import fused
from onebit.train.bn import recalibrate_bn

needs_kernels = pytest.mark.skipif(fused._fused is None, reason="C extension not built")

ACTS = {
    "none": lambda c: None,
    "identity": lambda c: nn.Identity(),
    "relu": lambda c: nn.ReLU(),
    "hardtanh": lambda c: nn.Hardtanh(),
    "relu6": lambda c: nn.ReLU6(),
    "rprelu": lambda c: RPReLU(c).float(),
    "prelu": lambda c: make_activation("prelu", c).float(),
}


def _bn(channels: int, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def _act(name: str, channels: int) -> nn.Module | None:
    act = ACTS[name](channels)
    if act is not None:
        with torch.no_grad():
            for p in act.parameters():
                p.uniform_(-0.3, 0.6)
    return act


def _inputs(channels: int, layout: str, mean: float = 3.0):
    """x (a mean far from 0), shortcut and the output gradient; planes of 1,260 items cross
    the kernels' 1,024-item float blocks; a few x give z exactly on hardtanh's bounds."""
    g = torch.Generator().manual_seed(channels)
    shape = (4, channels, 36, 35)
    x = torch.randn(shape, generator=g) * 2 + mean
    s = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g)
    if layout == "nhwc":
        x, s, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, s, grad))
    return x, s, grad


def _step(bn, act, x, s, grad, fused_on, monkeypatch):
    """(output, grads of x, shortcut and every parameter, bn buffers) of one forward +
    backward on copies of the modules."""
    monkeypatch.setattr(bn_act, "enabled", fused_on)
    bn, act = copy.deepcopy(bn), copy.deepcopy(act)
    xi = x.clone().requires_grad_(True)
    si = None if s is None else s.clone().requires_grad_(True)
    out = bn_act.bn_act(bn, xi, si, act)
    (out * grad).sum().backward()
    params = [*bn.parameters(), *(act.parameters() if act is not None else [])]
    grads = [xi.grad, None if si is None else si.grad, *(p.grad for p in params)]
    return out, grads, [bn.running_mean, bn.running_var, bn.num_batches_tracked]


def _reference(bn, act, x, s, grad):
    """The float64 formula: act((x - mean) / sqrt(var + eps) w + b + s), mean and biased var
    of the batch in train mode, the running ones in eval mode; its gradients by autograd."""
    bn64 = copy.deepcopy(bn).double()
    act64 = copy.deepcopy(act).double() if act is not None else None
    x64 = x.double().requires_grad_(True)
    s64 = None if s is None else s.double().requires_grad_(True)
    if bn.training:
        mean = x64.mean(dim=(0, 2, 3))
        var = x64.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn64.running_mean, bn64.running_var
    shape = (1, -1, 1, 1)
    z = (x64 - mean.view(shape)) / (var.view(shape) + bn.eps).sqrt()
    z = z * bn64.weight.view(shape) + bn64.bias.view(shape)
    if s64 is not None:
        z = z + s64
    out = z if act64 is None else act64(z)
    (out * grad.double()).sum().backward()
    params = [*bn64.parameters(), *(act64.parameters() if act64 is not None else [])]
    return out, [x64.grad, None if s64 is None else s64.grad, *(p.grad for p in params)]


@needs_kernels
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_fused_equals_the_modules_and_the_float64_formula(
    act, layout, shortcut, train, monkeypatch
):
    """Output, the gradients of x, the shortcut and every parameter (BatchNorm weight and
    bias, PReLU slopes, RPReLU shifts), and the running statistics after the step: equal to
    the modules' within float32 rounding, and no further from the float64 formula than the
    modules' own float32 chain."""
    torch.manual_seed(0)
    channels = 6
    bn, layer = _bn(channels), _act(act, channels)
    bn.train(train)
    x, s, grad = _inputs(channels, layout)
    s = s if shortcut else None
    out, grads, buffers = _step(bn, layer, x, s, grad, True, monkeypatch)
    assert type(out.grad_fn).__name__ == "_BnActBackward"
    out_ref, grads_ref, buffers_ref = _step(bn, layer, x, s, grad, False, monkeypatch)
    assert type(out_ref.grad_fn).__name__ != "_BnActBackward"
    exact_out, exact = _reference(bn, layer, x, s, grad)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), exact_out, rtol=1e-5, atol=1e-5)
    for i, (got, want, pytorch) in enumerate(zip(grads, exact, grads_ref, strict=True)):
        if want is None:
            assert got is None and pytorch is None
            continue
        scale = want.abs().max().item() + 1e-6
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=0, atol=2e-5, msg=i)
        assert (got.double() - want).abs().max() <= (
            pytorch.double() - want
        ).abs().max() + 1e-5 * scale
    for got, want in zip(buffers, buffers_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if train:
        assert buffers[2].item() == 1
        assert not torch.equal(buffers[0], bn.running_mean)  # they moved


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_thread_counts_give_the_same_result(threads, layout, monkeypatch):
    """The per-channel sums are split by thread and added in thread order: any thread count
    gives the modules' result; the same count, the same bits."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    bn, act = _bn(5), _act("hardtanh", 5)
    x, s, grad = _inputs(5, layout)
    out, grads, _ = _step(bn, act, x, s, grad, True, monkeypatch)
    again, grads_again, _ = _step(bn, act, x, s, grad, True, monkeypatch)
    assert torch.equal(out, again) and all(
        torch.equal(a, b) for a, b in zip(grads, grads_again, strict=True)
    )
    ref, grads_ref, _ = _step(bn, act, x, s, grad, False, monkeypatch)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_hardtanh_bounds_and_relu_zero_take_pytorchs_gradient(monkeypatch):
    """z exactly on hardtanh's bounds (and ReLU's 0) gets no gradient, as PyTorch's
    hardtanh_backward / threshold_backward give it; just inside, the full gradient."""
    bn = _bn(2)
    bn.eval()
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # invstd 1: z = x
    x = torch.tensor([-1.0, 1.0, 0.0, 0.5, -0.99, 1.01]).view(1, 2, 1, 3)
    grad = torch.ones_like(x)
    for name in ("hardtanh", "relu"):
        out, grads, _ = _step(bn, _act(name, 2), x, None, grad, True, monkeypatch)
        ref, grads_ref, _ = _step(bn, _act(name, 2), x, None, grad, False, monkeypatch)
        assert torch.equal(out, ref), name
        assert torch.equal(grads[0], grads_ref[0]), name


@needs_kernels
def test_statistics_of_a_large_mean_keep_their_precision(monkeypatch):
    """Shifted sums: a channel with mean 1e4 and std 1 still gets its variance (a plain
    sum of squares in float32 would lose it)."""
    bn = _bn(3)
    x, s, grad = _inputs(3, "nchw", mean=1e4)
    out, grads, buffers = _step(bn, None, x, s, grad, True, monkeypatch)
    exact_out, exact = _reference(bn, None, x, s, grad)
    torch.testing.assert_close(out.double(), exact_out, rtol=1e-4, atol=2e-3)
    for got, want in zip(grads[:2], exact[:2], strict=True):  # x, shortcut
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    var = x.double().var(dim=(0, 2, 3))
    want = bn.running_var.double() * 0.9 + var * 0.1
    torch.testing.assert_close(buffers[1].double(), want, rtol=1e-4, atol=0)


@needs_kernels
def test_recalibration_and_evaluation_of_a_network_match_the_modules(monkeypatch):
    """ResNet-20 (ReCU, its blocks end in bn_act): BatchNorm recalibration (momentum None,
    a cumulative average, no autograd), then an eval forward, fused and module by module."""
    torch.manual_seed(0)
    model = create_model("resnet20", method="recu", bits="1w1a", num_classes=10, in_chans=1)
    batches = [(torch.randn(16, 1, 32, 32), None) for _ in range(3)]
    results = []
    for on in (True, False):
        monkeypatch.setattr(bn_act, "enabled", on)
        m = copy.deepcopy(model)
        assert recalibrate_bn(m, batches, 3) == 3
        m.eval()
        with torch.no_grad():
            out = m(batches[0][0])
        stats = [t.clone() for name, t in m.state_dict().items() if "running" in name]
        results.append((out, stats))
    (out, stats), (out_ref, stats_ref) = results
    for a, b in zip(stats, stats_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, out_ref, rtol=1e-3, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("name", ["resnet20:recu", "resnet20:fp", "resnet20:reactnet"])
def test_a_training_step_of_resnet20_matches_the_modules(name, monkeypatch):
    """One forward + backward of ResNet-20 with its block ends fused or not: the loss, the
    input gradient and the parameters' gradients agree, each within 1e-3 of the larger of its
    own largest entry and a hundredth of the largest gradient in the network (the last
    block's shift_out sums cancel to ~1e-8 before the head's BatchNorm). ReCU's weight
    scales alpha are left out: their gradients are ill-conditioned in float32 (scaling one
    BatchNorm weight by 1 + 1e-7 moves them by 10-50%, fused or not)."""
    model_name, method = name.split(":")
    torch.manual_seed(0)
    bits = "32w32a" if method == "fp" else "1w1a"
    model = create_model(model_name, method=method, bits=bits, num_classes=10, in_chans=1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    results = []
    for on in (True, False):
        monkeypatch.setattr(bn_act, "enabled", on)
        m = copy.deepcopy(model)
        xi = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(m(xi), y)
        loss.backward()
        grads = {"x": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}
        results.append((loss.detach(), grads))
    (loss, grads), (loss_ref, grads_ref) = results
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    largest = max(g.abs().max().item() for g in grads_ref.values())
    for key, want in grads_ref.items():
        if key.endswith(".alpha"):
            continue
        scale = max(want.abs().max().item(), 1e-2 * largest)
        torch.testing.assert_close(grads[key] / scale, want / scale, rtol=0, atol=1e-3, msg=key)


def test_falls_back_to_the_modules_where_it_cannot_fuse(monkeypatch):
    """A forward hook on the BatchNorm or the activation (onebit summary/ops, distillation),
    an activation the kernels lack, bfloat16, a shortcut of another shape (broadcast): the
    modules run, with their hooks and PyTorch's result."""
    bn, x = _bn(4), torch.randn(2, 4, 5, 5, requires_grad=True)
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append("bn"))
    out = bn_act.bn_act(bn, x, None, nn.Hardtanh())
    assert seen == ["bn"] and type(out.grad_fn).__name__ != "_BnActBackward"
    hook.remove()
    relu = nn.ReLU()
    relu.register_full_backward_hook(lambda m, gi, go: seen.append("relu backward"))
    bn_act.bn_act(bn, x, None, relu).sum().backward()
    assert seen == ["bn", "relu backward"]
    seen.remove("relu backward")
    rp = RPReLU(4).float()
    rp.prelu.register_forward_hook(lambda m, i, o: seen.append("prelu"))
    out = bn_act.bn_act(bn, x, None, rp)  # RPReLU's own fused pass: no call of its PReLU
    assert type(out.grad_fn).__name__ == "_FusedRPReLUBackward"
    with torch.no_grad():
        bn_act.bn_act(bn, x, None, rp)
    assert seen == ["bn", "prelu"]
    for act, s, xx in (
        (RPReLU(4).double(), None, x),  # float64 parameters: PyTorch's output is float64
        (LeakyClip(), None, x),
        (nn.ReLU(), torch.randn(1, 4, 1, 1), x),
        (nn.ReLU(), None, x.detach().bfloat16()),
    ):
        b = copy.deepcopy(bn).to(xx.dtype)
        out = bn_act.bn_act(b, xx, s, act)
        ref = act(copy.deepcopy(bn).to(xx.dtype)(xx) + (0 if s is None else s))
        torch.testing.assert_close(out, ref)
        assert out.grad_fn is None or type(out.grad_fn).__name__ != "_BnActBackward"


def test_one_value_per_channel_in_training_is_pytorchs_error():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_act.bn_act(bn, torch.randn(1, 3, 1, 1), None, nn.ReLU())


def test_a_torch_fx_trace_sees_the_modules():
    """onebit export traces blocks with torch.fx: bn_act gives it the BatchNorm, the add and
    the activation as separate nodes, as before."""
    from onebit.nn.trace import trace_graph

    model = create_model("resnet20", method="recu", bits="1w1a", num_classes=10, in_chans=1)
    graph = trace_graph(model)
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert "stages.0.0.bn1" in targets and "stages.0.0.act1" in targets
    assert "bn_act" not in str(graph)


def test_a_torch_jit_trace_records_the_modules():
    """torch.jit.trace (and the TorchScript ONNX exporter) sees PyTorch's operators, not the
    fused autograd.Function, and the traced block computes what the block does."""
    block = create_model("resnet20", method="fp", bits="32w32a", num_classes=10).stages[0][0]
    block.eval()
    x = torch.randn(2, 16, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # the checks read no tensor
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace in torch 2.13
        traced = torch.jit.trace(block, x)
    graph = str(traced.inlined_graph)
    assert "_BnAct" not in graph and graph.count("aten::batch_norm") == 2
    with torch.no_grad():
        torch.testing.assert_close(traced(x), block(x), rtol=1e-5, atol=1e-5)
