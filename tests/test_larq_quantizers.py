"""Larq's quantizers in onebit.contrib.larq (registered through the public API alone): each
forward and backward pass against Larq's formula, their quant: options, a training step, the
op count, and export refusing the ones that are not +-1."""

import dataclasses
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import onebit
from onebit import deploy, quant
from onebit.config import load_config
from onebit.data import InputSpec
from onebit.errors import ExportError
from onebit.nn import BinaryConv2d
from onebit.train import Trainer, apply_quant_schedule

FP = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_fp.yaml"
POINTS = torch.tensor(
    [-2.0, -1.0, -0.5, -0.06, -0.05, -0.01, 0.0, 0.01, 0.05, 0.5, 1.0, 1.0001, 2.0],
    dtype=torch.float64,
)
NAMES = ("swish_sign", "ste_heaviside", "ste_tern", "dorefa")


@pytest.fixture(scope="module")
def larq():
    """onebit.contrib.larq, and two methods using its quantizers, registered for this module's
    tests and unregistered after them (other test modules list the built-in binarizers)."""
    name = "onebit.contrib.larq"
    if name in sys.modules:
        module = importlib.reload(sys.modules[name])
    else:
        module = importlib.import_module(name)
    onebit.register_method("larq_ternary", "dorefa", "ste_tern", "hardtanh", "a test's method")
    onebit.register_method("larq_swish", "swish_sign", "swish_sign", "hardtanh", "BNN+")
    yield module
    for method in [m for m, spec in quant.METHODS.items() if {spec.act, spec.weight} & set(NAMES)]:
        quant.unregister_method(method)
    for kind in ("act", "weight"):
        for binarizer in NAMES:
            quant.unregister_binarizer(kind, binarizer)


def grad_of(fn, x, **kwargs):
    x = x.clone().requires_grad_(True)
    g = torch.linspace(0.5, 1.5, x.numel(), dtype=x.dtype).reshape(x.shape)
    (fn(x, **kwargs) * g).sum().backward()
    return x.grad / g


def test_every_quantizer_is_registered_for_both_sides_with_docs(larq):
    for name in NAMES:
        for kind in ("act", "weight"):
            spec = quant.binarizer(kind, name)
            doc = spec.fn.__doc__
            assert "forward" in doc and "backward" in doc and "larq" in doc, (kind, name)
    bits = {n: quant.act_spec(n).bits for n in NAMES}
    assert bits == {"swish_sign": 1, "ste_heaviside": 1, "ste_tern": 2, "dorefa": 2}
    keys = [f.name for f in dataclasses.fields(quant.QuantConfig)]
    assert keys == ["tau", "ede", "ste_clip", "swish_sign", "ste_heaviside", "ste_tern"]


def test_swish_sign_forward_is_sign_and_backward_the_signswish_derivative(larq):
    assert torch.equal(larq.swish_sign(POINTS), quant.sign(POINTS))
    for beta in (5.0, 2.0):
        bx = beta * POINTS
        expected = beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))
        assert torch.allclose(grad_of(larq.swish_sign, POINTS, beta=beta), expected)

        def twin(x, beta=beta):  # BNN+'s SignSwish, SS(x) = 2 s(bx) (1 + bx (1 - s(bx))) - 1
            s = torch.sigmoid(beta * x)
            return 2 * s * (1 + beta * x * (1 - s)) - 1

        assert torch.allclose(grad_of(larq.swish_sign, POINTS, beta=beta), grad_of(twin, POINTS))
    assert grad_of(larq.swish_sign, POINTS)[6] == 5.0  # beta at 0: 5 (2 - 0) / 2


def test_ste_heaviside_is_zero_one_with_clipped_gradient(larq):
    out = larq.ste_heaviside(POINTS)
    assert out.tolist() == [float(v > 0) for v in POINTS.tolist()]  # 0 -> 0
    assert grad_of(larq.ste_heaviside, POINTS).tolist() == [float(abs(v) <= 1) for v in POINTS]
    clipped = grad_of(larq.ste_heaviside, POINTS, clip_value=0.5)
    assert clipped.tolist() == [float(abs(v) <= 0.5) for v in POINTS]


def test_ste_tern_thresholds_and_clipped_gradient(larq):
    # sign(sign(x + D) + sign(x - D)), sign(0) = 0: +-1 from |x| >= D on, 0 inside
    expected = [(v >= 0.05) - (v <= -0.05) for v in POINTS.tolist()]
    assert larq.ste_tern(POINTS).tolist() == expected
    assert larq.ste_tern(POINTS, threshold_value=0.6).tolist() == [
        (v >= 0.6) - (v <= -0.6) for v in POINTS.tolist()
    ]
    # Ternary Weight Networks: D = 0.7 mean|x| over the whole tensor
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    d = 0.7 * w.abs().mean()
    twn = larq.ste_tern(w, ternary_weight_networks=True)
    assert torch.equal(twn, (w >= d).double() - (w <= -d).double())
    assert grad_of(larq.ste_tern, POINTS).tolist() == [float(abs(v) <= 1) for v in POINTS]
    twn_grad = grad_of(larq.ste_tern, w, ternary_weight_networks=True, clip_value=0.5)
    assert torch.equal(twn_grad, (w.abs() <= 0.5).double())  # D is not differentiated


def test_dorefa_activations_quantize_on_zero_one(larq):
    x = torch.linspace(-0.5, 1.5, 41, dtype=torch.float64)
    n = 3  # 2 bits
    expected = torch.round(x.clamp(0, 1) * n) / n
    assert torch.equal(larq.dorefa_activations(x), expected)
    assert set(larq.dorefa_activations(x).tolist()) == {0.0, 1 / 3, 2 / 3, 1.0}
    assert torch.equal(grad_of(larq.dorefa_activations, x), ((x >= 0) & (x <= 1)).double())
    four = larq.dorefa_activations(x, k_bit=4)
    assert torch.equal(four, torch.round(x.clamp(0, 1) * 15) / 15)


def test_dorefa_weights_quantize_tanh_normed_to_minus_one_one(larq):
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64) * 0.8
    limited = torch.tanh(w)
    largest = limited.abs().max()
    q = torch.round((limited / (2 * largest) + 0.5) * 3) / 3
    assert torch.allclose(larq.dorefa_weights(w), 2 * q - 1)
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0], dtype=torch.float64)
    out = larq.dorefa_weights(w)
    assert torch.allclose(out.unique(), levels)
    # the max is under stop-gradient: d out / dw = (1 - tanh(w)^2) / max|tanh(w)|
    assert torch.allclose(grad_of(larq.dorefa_weights, w), (1 - limited**2) / largest)
    # all zero: u = 1/2 (Larq's divide_no_nan), round(1.5) = 2 (half to even), 2 (2/3) - 1
    assert torch.allclose(larq.dorefa_weights(torch.zeros(2, 3)), torch.full((2, 3), 1 / 3))


def test_register_dorefa_other_widths(larq):
    larq.register_dorefa(3, "dorefa3")
    try:
        # tanh(w) = 0.2 k - 0.7 (k = 0..7), max 0.7: u = k / 7, all 8 levels 2 k / 7 - 1;
        # 0.16: 7 u = 4.3 rounds to 4, 1/7; -0.62: 7 u = 0.4 rounds to 0, -1
        limited = torch.tensor([-0.7, -0.5, -0.3, -0.1, 0.1, 0.3, 0.5, 0.7, 0.16, -0.62])
        w = torch.atanh(limited.double()).reshape(10, 1, 1, 1)
        levels = [-1, -5 / 7, -3 / 7, -1 / 7, 1 / 7, 3 / 7, 5 / 7, 1, 1 / 7, -1]
        assert quant.weight("dorefa3")(w).flatten().tolist() == pytest.approx(levels, abs=1e-12)
        layer = BinaryConv2d(8, 8, 3, act="dorefa3", weight="dorefa3")
        assert layer.bits == "3w3a"
        x = torch.rand(2, 8, 5, 5)
        assert torch.equal(layer.binary_input(x), torch.round(x * 7) / 7)
    finally:
        for kind in ("act", "weight"):
            quant.unregister_binarizer(kind, "dorefa3")


def test_options_reach_the_layers_as_python_numbers(larq):
    config = load_config(
        FP,
        [
            "quant.swish_sign.beta=2.5",
            "quant.ste_tern.threshold_value=0.2",
            "quant.ste_tern.ternary_weight_networks=true",
            "quant.ste_heaviside.clip_value=0.5",
        ],
    )
    assert config.to_dict()["quant"]["ste_tern"] == {
        "threshold_value": 0.2,
        "ternary_weight_networks": True,
        "clip_value": 1.0,
    }
    model = nn.Sequential(
        BinaryConv2d(2, 2, 1, act="swish_sign", weight="ste_tern"),
        BinaryConv2d(2, 2, 1, act="ste_heaviside", weight="ste_tern"),
    )
    assert quant.set_schedule_state(model, 0, 1, config.quant) == {}  # nothing is logged
    tern = {"threshold_value": 0.2, "ternary_weight_networks": True, "clip_value": 1.0}
    assert model[0].quant_constants == {"act": {"beta": 2.5}, "weight": tern}
    # two clip_value constants in one layer, one per binarizer
    assert model[1].quant_constants == {"act": {"clip_value": 0.5}, "weight": tern}
    assert not list(model.buffers())


def test_one_training_step_with_larq_quantizers(larq, one_thread):
    for method in ("larq_ternary", "larq_swish"):
        config = load_config(
            FP,
            [
                f"model.method={method}",
                "model.bits=1w1a",
                "quant.ste_tern.threshold_value=0.01",
                "data.subset=4",
                "data.batch_size=2",
                "data.eval_subset=2",
                "runtime.device=cpu",
                "runtime.compile=false",
            ],
        )
        trainer = Trainer(config)
        apply_quant_schedule(trainer.model, config.quant, 0, config.schedule.epochs)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        metrics = trainer.train_epoch(0, max_steps=1)
        assert math.isfinite(metrics["train_loss"])
        changed = sum(
            not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
        )
        assert changed > len(before) // 2, method


def test_count_ops_counts_binary_operations_for_one_bit_sides_only(larq):
    size = (1, 1, 32, 32)
    xnor = onebit.count_ops(onebit.create_model("resnet20", method="xnor", in_chans=1), size)
    swish = onebit.count_ops(onebit.create_model("resnet20", method="larq_swish", in_chans=1), size)
    ternary = onebit.create_model("resnet20", method="larq_ternary", in_chans=1)
    counted = onebit.count_ops(ternary, size)
    assert swish.bops == xnor.bops > 0
    assert counted.bops == 0 and counted.flops == xnor.flops + xnor.bops
    assert {r.bits for r in counted.table if r.bits not in ("", "32w32a")} == {"2w2a"}


@pytest.mark.parametrize(
    "act,weight,message",
    [
        ("ste_heaviside", "xnor", "activation binarizer 'ste_heaviside' is not sign"),
        ("ste_tern", "xnor", "activation binarizer 'ste_tern' is not sign"),
        ("dorefa", "sign", "activation binarizer 'dorefa' is not sign"),
        ("ste", "ste_tern", r"is not \+-scale per output channel \(weight binarizer 'ste_tern'\)"),
        ("ste", "dorefa", r"is not \+-scale per output channel \(weight binarizer 'dorefa'\)"),
        ("ste_tern", None, "activation binarizer 'ste_tern' is not sign"),  # a 32w1a layer
    ],
)
def test_export_refuses_quantizers_that_are_not_sign(larq, act, weight, message, tmp_path):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        BinaryConv2d(8, 8, 3, padding=1, act=act, weight=weight),
        nn.Flatten(),
        nn.Linear(8 * 36, 3),
    ).eval()
    with pytest.raises(ExportError, match=f"layer 1: .*{message}"):
        deploy.export(model, tmp_path / "m.onebit")
    assert not (tmp_path / "m.onebit").exists()


@torch.no_grad()
def test_swish_sign_is_one_bit_and_deploys(larq, tmp_path):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        BinaryConv2d(8, 8, 3, padding=1, act="swish_sign", weight="swish_sign"),
        nn.Flatten(),
        nn.Linear(8 * 36, 3),
    ).eval()
    spec = InputSpec(1, 6, (0.5,), (0.25,))
    meta = deploy.export(model, tmp_path / "m.onebit", input_spec=spec)
    assert meta["packed"] == ["1"]
    deployed = deploy.load(tmp_path / "m.onebit")  # the file alone: no model, no import
    x = torch.randn(4, 1, 6, 6)
    torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_layer_forward_has_no_host_sync(larq, name):
    """A full-graph compile fails on any graph break, which .item() / .cpu() would cause."""
    torch._dynamo.reset()
    layer = BinaryConv2d(4, 4, 3, padding=1, act=name, weight=name)
    if name == "ste_tern":  # the threshold computed from the weights, on the device
        layer.quant_constants["weight"]["ternary_weight_networks"] = True
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(compiled(x), layer(x))
