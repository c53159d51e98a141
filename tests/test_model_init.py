"""``model.init``: each scheme gives the statistics it names, None changes nothing, bad specs
are one-line errors naming the key, and a config's ``model.init`` reaches the trained model."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import onebit
from onebit.cli import main
from onebit.config import config_from_dict, read_yaml
from onebit.errors import ConfigError
from onebit.models import model_entry
from onebit.models.init import apply_init, check_init
from onebit.nn import BATCHNORMS, BinaryConv2d
from onebit.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
RECU = ROOT / "configs/fmnist/resnet20_recu.yaml"


def big_conv() -> nn.Conv2d:
    """256 -> 512 channels, 3x3: fan_in 2,304, fan_out 4,608, 1.18 M weights (std to ~0.1 %)."""
    return BinaryConv2d(256, 512, 3, bias=True)


@pytest.mark.parametrize(
    "scheme,std",
    [
        ("kaiming_fan_in", math.sqrt(2 / 2304)),
        ("kaiming_fan_out", math.sqrt(2 / 4608)),
        ("xavier_normal", math.sqrt(2 / (2304 + 4608))),
        ("xavier_uniform", math.sqrt(6 / (2304 + 4608)) / math.sqrt(3)),
    ],
)
def test_normal_and_xavier_schemes_have_their_std_and_zero_bias(scheme, std):
    conv = big_conv()
    apply_init(nn.Sequential(conv), {"conv": scheme})
    assert conv.weight.std().item() == pytest.approx(std, rel=0.01)
    assert abs(conv.weight.mean().item()) < 0.01 * std
    assert torch.count_nonzero(conv.bias) == 0
    if scheme == "xavier_uniform":
        assert conv.weight.abs().max().item() <= math.sqrt(6 / (2304 + 4608))


def test_uniform_small_is_bireal_init():
    conv = big_conv()
    apply_init(conv, "uniform_small")
    assert conv.weight.min() >= 0 and conv.weight.max() < 1e-3
    assert conv.weight.mean().item() == pytest.approx(5e-4, rel=0.01)


def test_linear_schemes_apply_to_linear_layers_only():
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Linear(1024, 512))
    conv_before = model[0].weight.clone()
    apply_init(model, {"linear": "kaiming_fan_out"})
    assert torch.equal(model[0].weight, conv_before)
    assert model[1].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.01)
    assert torch.count_nonzero(model[1].bias) == 0


def test_torch_is_reset_parameters_under_the_same_seed():
    model = onebit.create_model("real2binary18", input_hw=32, num_classes=10)
    expected = copy.deepcopy(model)
    torch.manual_seed(1)
    apply_init(model, "torch")
    torch.manual_seed(1)
    for m in expected.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    weights = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) > 20
    for name in weights:
        got, want = model.get_submodule(name), expected.get_submodule(name)
        assert torch.equal(got.weight, want.weight), name
        assert (got.bias is None) == (want.bias is None)
        assert got.bias is None or torch.equal(got.bias, want.bias), name
    # the rest of the "torch" shorthand undoes real2binary18's Keras init
    bns = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)
    assert all(torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0 for m in bns)
    assert all(torch.all(m.weight == 0.25) for m in model.modules() if isinstance(m, nn.PReLU))


def test_bn_weight_fills_every_batchnorm2d_of_resnet18_recu_after_the_builder_init():
    # ReCU / FIRNet imagenet resnet.py: every BatchNorm2d weight 1e-8; the BN1d head keeps 1
    model = onebit.create_model(
        "resnet18", method="recu", init={"conv": "kaiming_fan_in", "bn_weight": 1e-8}
    )
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1e-8) and torch.count_nonzero(m.bias) == 0 for m in bns)
    (head,) = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert torch.all(head.weight == 1.0)
    # 64 -> 128, 3x3: fan_in 576 (the builder's fan_out would be 1,152)
    conv = model.layer2[0].conv1
    assert isinstance(conv, BinaryConv2d)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)


def test_bn_eps_momentum_and_prelu_are_set_everywhere():
    model = onebit.create_model(
        "birealnet8", init={"bn_eps": 1e-3, "bn_momentum": 0.01, "prelu": 0.5}
    )
    bns = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert bns and prelus  # bnew's RPReLU holds an nn.PReLU
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    assert all(torch.all(m.weight == 0.5) for m in prelus)


def test_a_conv_scheme_overrides_the_builders_own_init():
    model = onebit.create_model("birealnet18", init="kaiming_fan_out")
    conv = model.layer1[0].conv  # U[0, 1e-3) by the builder
    assert conv.weight.min() < 0
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)


@pytest.mark.parametrize("name", onebit.list_models())
def test_no_init_leaves_the_builders_weights_bit_identical(name):
    torch.manual_seed(0)
    built = model_entry(name).builder().state_dict()
    torch.manual_seed(0)
    created = onebit.create_model(name, init=None)
    assert created.state_dict().keys() == built.keys()
    assert all(torch.equal(v, built[k]) for k, v in created.state_dict().items())
    assert created.onebit_spec["options"]["init"] is None


def test_same_seed_same_weights_and_the_spec_is_recorded():
    spec = {"conv": "xavier_normal", "linear": "xavier_uniform", "bn_weight": 0.5}
    torch.manual_seed(3)
    a = onebit.create_model("resnet20", init=spec)
    torch.manual_seed(3)
    b = onebit.create_model("resnet20", init=spec)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert a.onebit_spec["options"]["init"] == spec
    rebuilt = onebit.create_model(a.onebit_spec["name"], **a.onebit_spec["options"])
    assert rebuilt.onebit_spec == a.onebit_spec


def test_shorthands_and_yaml_text_numbers():
    # "torch": every number as a freshly built PyTorch layer has it
    bn, prelu = nn.BatchNorm2d(4), nn.PReLU()
    numbers = {"bn_eps": bn.eps, "bn_momentum": bn.momentum, "prelu": prelu.weight.item()}
    numbers["bn_weight"] = bn.weight[0].item()
    assert check_init("torch") == {"conv": "torch", "linear": "torch", **numbers}
    assert check_init("xavier_normal")["conv"] == "xavier_normal"
    assert check_init("xavier_normal")["bn_weight"] is None
    assert check_init({"bn_weight": "1e-8"})["bn_weight"] == 1e-8  # YAML 1.1 reads text


@pytest.mark.parametrize(
    "spec,expected",
    [
        ({"cnv": "torch"}, "model.init.cnv is unknown; .* did you mean model.init.conv"),
        ({"conv": "kaiming"}, "model.init.conv: 'kaiming' is not one of torch, .*kaiming_fan_in"),
        ({"linear": 3}, "model.init.linear: 3 is not one of torch"),
        ("kaimin_fan_in", "model.init: 'kaimin_fan_in' is not .* did you mean kaiming_fan_in"),
        ([1], "model.init: expected null, .*got list"),
        ({"bn_weight": True}, "model.init.bn_weight: True is not a number"),
        ({"prelu": "x"}, "model.init.prelu: 'x' is not a number"),
        ({"bn_eps": 0}, "model.init.bn_eps: 0.0 is not above 0"),
        ({"bn_momentum": 2}, r"model.init.bn_momentum: 2.0 is not in \[0, 1\]"),
    ],
)
def test_bad_specs_are_one_line_config_errors(spec, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        onebit.create_model("resnet20", init=spec)
    assert "\n" not in str(err.value)


def test_config_checks_model_init_and_the_trainer_builds_with_it():
    data = read_yaml(RECU)
    data["model"]["init"] = {"conv": "kaiming_fan_in", "bn_weight": 1.0e-8}
    data["data"].update(subset=64, batch_size=32, eval_subset=64)
    data["runtime"]["device"] = "cpu"
    trainer = Trainer(config_from_dict(data))
    model = trainer.model
    assert model.onebit_spec["options"]["init"] == data["model"]["init"]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1e-8) for m in bns)
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d) and m.in_channels == 64]
    weights = torch.cat([m.weight.flatten() for m in convs])  # fan_in 576
    assert weights.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)

    data["model"]["init"] = {"conv": "kaiming_fanin"}
    with pytest.raises(ConfigError, match=r"config key model\.init\.conv: .kaiming_fanin. is not"):
        config_from_dict(data)


def test_cli_takes_init_as_a_model_option(capsys):
    assert main(["summary", "resnet20", "--opt", "init={conv: torch, bn_weight: 0.5}"]) == 0
    assert main(["summary", "resnet20", "--opt", "init={conv: he}"]) == 2
    assert "model.init.conv: 'he' is not one of" in capsys.readouterr().err
