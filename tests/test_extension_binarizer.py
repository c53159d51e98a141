"""A binarizer and a method defined outside the package (inside the test functions): registered
with ``onebit.register_binarizer`` / ``onebit.register_method``, configured under ``quant:``,
trained with its schedule logged, resumed, exported and deployed without a change to onebit
(docs/extending.md, "A new binarizer")."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import onebit
from conftest import stop_in_epoch_two
from onebit import deploy, quant
from onebit.config import config_from_dict, load_config
from onebit.errors import ConfigError, UnknownNameError
from onebit.nn import BATCHNORMS
from onebit.train import RunDir, Trainer
from onebit.train.trainer import _epoch_line

FP = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_fp.yaml"
TINY = [
    "data.subset=64",
    "data.batch_size=32",
    "data.eval_subset=32",
    "eval.bn_recalibrate=0",
    "runtime.device=cpu",
    "runtime.compile=false",
]


@pytest.fixture
def registered():
    """Unregister, after the test, every binarizer and method it registered."""
    tables = {"act": quant.ACTIVATIONS, "weight": quant.WEIGHTS}
    before = {kind: set(table) for kind, table in tables.items()}
    methods = set(quant.METHODS)
    yield
    for name in set(quant.METHODS) - methods:
        quant.unregister_method(name)
    for kind, table in tables.items():
        for name in set(table) - before[kind]:
            quant.unregister_binarizer(kind, name)


def register_soft_sign():
    """The user's code: sign with a tanh surrogate whose sharpness beta grows linearly over
    training from quant.sharpness.start to quant.sharpness.end; a method using it."""

    @dataclass
    class SharpnessConfig:
        start: float = field(default=1.0, metadata={"min": 0.0})
        end: float = 4.0

    @dataclass
    class SharpnessOptions:
        sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)

    def sharpness_schedule(epoch, epochs, options):
        s = options.sharpness
        return {"beta": s.start + (s.end - s.start) * epoch / epochs}

    @onebit.register_binarizer(
        "act",
        "soft_sign",
        state={"beta": 1.0},
        schedule=sharpness_schedule,
        log={"beta": "sharp_beta"},
        options=SharpnessOptions,
    )
    def soft_sign(x, beta=1.0):
        """Sign with a sharpening tanh surrogate.

        forward: sign(x); backward: g * beta * (1 - tanh(beta x)^2).
        Source: this test.
        """
        soft = torch.tanh(beta * x)
        return onebit.quant.sign(x) + (soft - soft.detach())

    onebit.register_method("soft", "soft_sign", "sign", "hardtanh", "a test's method")
    return SharpnessConfig


def test_registered_binarizer_is_a_quant_option_and_a_method(registered):
    made_before = quant.QuantConfig(ste_clip=1.25)
    sharpness = register_soft_sign()
    # a section made before the registration reads the new option's default
    assert made_before.sharpness == sharpness() and made_before.ste_clip == 1.25
    assert dataclasses.asdict(made_before)["sharpness"] == {"start": 1.0, "end": 4.0}
    config = load_config(FP, ["model.method=soft", "quant.sharpness.end=6"])
    assert config.quant.sharpness == sharpness(start=1.0, end=6.0)
    assert config.to_dict()["quant"]["sharpness"] == {"start": 1.0, "end": 6.0}
    assert config.to_dict()["quant"]["tau"] == [0.85, 0.99]  # the built-in keys stay
    with pytest.raises(ConfigError, match=r"quant.sharpness.stat is unknown\. Did you mean "):
        load_config(FP, ["quant.sharpness.stat=2"])
    with pytest.raises(ConfigError, match=r"quant.sharpness.start: -1.0 is below the minimum"):
        load_config(FP, ["quant.sharpness.start=-1"])
    with pytest.raises(ConfigError, match=r"config key quant.sharpnes is unknown.*sharpness"):
        load_config(FP, ["quant.sharpnes.end=2"])
    with pytest.raises(ConfigError, match=r"model.method: unknown method 'sfot'.*'soft'"):
        load_config(FP, ["model.method=sfot"])
    layer = onebit.nn.BinaryConv2d(3, 4, 3, act="soft_sign", weight="sign")
    assert layer.beta.item() == 1.0 and "beta" not in layer.state_dict()
    assert quant.set_schedule_state(layer, 1, 4, config.quant) == {"sharp_beta": 2.25}
    assert layer.beta.item() == 2.25
    x = torch.linspace(-2, 2, 3 * 25).reshape(1, 3, 5, 5).requires_grad_(True)
    layer.binary_input(x).sum().backward()
    # beta (1 - tanh(beta x)^2): float32 autograd cancels digits where tanh is near +-1
    assert torch.allclose(x.grad, 2.25 / torch.cosh(2.25 * x.detach()) ** 2, rtol=1e-3)
    # unregistered, its key and method are gone
    quant.unregister_method("soft")
    quant.unregister_binarizer("act", "soft_sign")
    with pytest.raises(ConfigError, match=r"quant.sharpness is unknown"):
        load_config(FP, ["quant.sharpness.end=6"])
    assert "sharpness" not in config_from_dict({"model": {"name": "resnet20"}}).to_dict()["quant"]


def test_registration_errors_name_the_clash(registered):
    register_soft_sign()

    @dataclass
    class Other:
        sharpness: float = 1.0

    with pytest.raises(ConfigError, match=r"option quant.sharpness of Other is already a key"):
        onebit.register_binarizer("weight", "other", options=Other)(lambda w: w)

    @dataclass
    class Tau:
        tau: float = 0.5

    with pytest.raises(ConfigError, match=r"option quant.tau of Tau is already a key of TauOpt"):
        onebit.register_binarizer("weight", "other", options=Tau)(lambda w: w)
    with pytest.raises(ConfigError, match=r"log name 'tau'"):
        onebit.register_binarizer("act", "other", state={"s": 1.0}, log={"s": "tau"})(lambda x: x)
    with pytest.raises(ConfigError, match=r"state name 'training'"):
        onebit.register_binarizer("act", "other", state={"training": 1.0})(lambda x: x)
    with pytest.raises(UnknownNameError, match=r"unknown weight binarizer 'sing'"):
        onebit.register_method("m", "soft_sign", "sing", "hardtanh", "")
    assert "other" not in quant.WEIGHTS and "other" not in quant.ACTIVATIONS


def test_registered_binarizer_trains_logs_its_schedule_and_resumes(registered, tmp_path):
    register_soft_sign()
    config = load_config(
        FP,
        [
            *TINY,
            "model.method=soft",
            "model.bits=1w1a",
            "schedule.epochs=2",
            "quant.sharpness.start=2",
            "quant.sharpness.end=6",
        ],
    )
    reference = tmp_path / "reference"
    Trainer(config, RunDir(reference)).fit()
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["sharp_beta"] for r in records] == [2.0, 4.0]
    assert "  sharp_beta 4  " in (reference / "train.log").read_text().splitlines()[-2]

    # stopped after its first epoch, then resumed: the same weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    stop_in_epoch_two(Trainer(config, RunDir(resumed)))
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 1
    Trainer(config, RunDir(resumed)).fit(resume=True)
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["sharp_beta"] for r in again] == [2.0, 4.0]
    a, b = load_file(reference / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert {k for k in a if k.startswith("model.")} == {k for k in b if k.startswith("model.")}
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


@torch.no_grad()
def test_registered_sign_like_binarizer_exports_and_deploys(registered, tmp_path):
    register_soft_sign()
    model = onebit.create_model("resnet20", method="soft", in_chans=1)
    model.train()
    for _ in range(2):
        model(torch.randn(16, 1, 32, 32))
    model.eval()
    # dyadic BatchNorm maps: folding them into the packed layers is then exact in fp32
    for m in model.modules():
        if isinstance(m, BATCHNORMS):
            m.running_var.copy_(torch.exp2(2 * torch.round(torch.log2(m.running_var) / 2)) - m.eps)
            m.weight.copy_(torch.exp2(torch.round(torch.log2(m.weight.abs()))))
            m.bias.copy_(torch.round(m.bias * 16) / 16)
            m.running_mean.copy_(torch.round(m.running_mean * 16) / 16)
    meta = deploy.export(model, tmp_path / "m.onebit")
    assert len(meta["packed"]) == 18 and meta["model"]["options"]["method"] == "soft"
    x = torch.randn(8, 1, 32, 32)
    expected = model(x)
    # the file is the network: it runs with the method and binarizer unregistered
    quant.unregister_method("soft")
    quant.unregister_binarizer("act", "soft_sign")
    got = deploy.load(tmp_path / "m.onebit")(x)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_epoch_line_prints_every_schedule_value():
    record = {
        "phase": 0,
        "epoch": 2,
        "step": 4,
        "lr": 0.05,
        "train_loss": 1.0,
        "train_top1": 50.0,
        "seconds": 1.0,
        "images_per_s": 64.0,
        "compile_seconds": 3.0,
        "val_loss": 1.0,
        "val_top1": 40.0,
        "val_top5": 90.0,
        "val_loss_stored": 2.0,
        "heldout_top5": 80.0,
        "tau": 0.9,
        "sharp_beta": 4.0,
        "bnew_reg": 1e-4,
        "bmd_beta": 1.01,
        "phase_name": "step2",
    }
    line = _epoch_line(record, 3)
    assert "lr 0.05  tau 0.9  sharp_beta 4  bnew_reg 0.0001  bmd_beta 1.01  1.0 s" in line
    assert "compile" not in line and "stored" not in line and "step2" not in line


def test_a_registration_that_could_never_run_is_refused_at_once():
    """A name that is no string, a function that is no function: refused when registered, so
    that nothing registered later fails (an int name broke every unknown-name message)."""
    before = set(quant.ACTIVATIONS)
    for args, fn, message in (
        (("act", 5), lambda x: x.sign(), "a binarizer's name is a non-empty string"),
        (("act", ""), lambda x: x.sign(), "a binarizer's name is a non-empty string"),
        (("act", "forty_two"), 42, "register a function fn"),
    ):
        with pytest.raises(ConfigError, match=message):
            quant.register_binarizer(*args)(fn)
    with pytest.raises(ConfigError, match="schedule= must be a function"):
        quant.register_binarizer("act", "bad_schedule", schedule=3)(lambda x: x.sign())
    assert set(quant.ACTIVATIONS) == before
    with pytest.raises(UnknownNameError, match="unknown activation binarizer 'nope'"):
        quant.act("nope")
