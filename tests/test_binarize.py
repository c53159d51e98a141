"""binarize() on a small model written here (no torchvision)."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import onebit
from onebit.errors import ConfigError
from onebit.nn import BinaryConv2d, BinaryLinear, is_binary
from onebit.nn.binary import BinaryLayer


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),
            nn.ReLU(),
        )
        self.hidden = nn.Linear(16, 12)
        self.classifier = nn.Linear(12, 3)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.classifier(torch.relu(self.hidden(x.mean((2, 3)))))


def test_binarize_swaps_inner_layers_and_keeps_first_and_last():
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = onebit.binarize(model, method="irnet")
    assert out is model
    assert type(model.stem) is nn.Conv2d and type(model.classifier) is nn.Linear
    assert isinstance(model.body[0], BinaryConv2d) and isinstance(model.body[3], BinaryConv2d)
    assert isinstance(model.hidden, BinaryLinear)
    conv = model.body[3]
    assert (conv.stride, conv.padding, conv.groups, conv.bias is not None) == (
        (2, 2),
        (1, 1),
        2,
        True,
    )
    assert conv.act_spec.name == "ede" and conv.weight_spec.name == "irnet"
    after = model.state_dict()
    for key, value in before.items():  # the latent weights are the old weights
        assert torch.equal(after[key], value), key
    y = model(torch.randn(2, 1, 8, 8))
    y.sum().backward()
    assert model.body[0].weight.grad is not None


def test_binarized_layer_computes_the_binary_conv_of_the_old_weights():
    model = TinyNet()
    w = model.body[0].weight.detach().clone()
    onebit.binarize(model, method="xnor")
    x = torch.randn(2, 8, 5, 5)
    alpha = w.abs().mean((1, 2, 3), keepdim=True)
    expected = nn.functional.conv2d(onebit.quant.sign(x), alpha * onebit.quant.sign(w), padding=1)
    assert torch.allclose(model.body[0](x), expected, atol=1e-6)


def test_binarize_options():
    model = onebit.binarize(TinyNet(), method="recu", keep_first=False, keep_last=False)
    assert is_binary(model.stem) and is_binary(model.classifier)
    assert model.stem.alpha is not None
    model = onebit.binarize(TinyNet(), method="ste", bits="1w32a", skip=["hidden"])
    assert type(model.hidden) is nn.Linear
    assert model.body[0].act_spec is None and model.body[0].weight_spec.name == "sign"
    model = onebit.binarize(TinyNet(), method="fp")
    assert not any(is_binary(m) for m in model.modules())


def test_binarize_is_idempotent_on_binary_layers():
    model = onebit.binarize(TinyNet(), method="xnor")
    first = model.body[0]
    onebit.binarize(model, method="irnet")
    assert model.body[0] is first


def test_binarize_bad_input():
    with pytest.raises(ConfigError, match="'nope'"):
        onebit.binarize(TinyNet(), skip=["nope"])
    with pytest.raises(onebit.errors.UnknownNameError, match="method"):
        onebit.binarize(TinyNet(), method="xnr")
    for model in ("resnet20", None, nn.Conv2d):
        with pytest.raises(ConfigError, match=r"binarize\(\) takes a torch.nn.Module instance"):
            onebit.binarize(model)


def test_binarize_skip_takes_one_name_as_a_string():
    model = onebit.create_model("resnet20", method="fp", in_chans=1, num_classes=10)
    onebit.binarize(model, act_fix="hardtanh", skip="stages.0.0.conv1")
    block = model.stages[0][0]
    assert type(block.conv1) is nn.Conv2d and type(block.conv2) is not nn.Conv2d


class TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock: conv-BN-ReLU-conv-BN, + identity, ReLU (one shared module)."""

    def __init__(self, c: int, functional: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.functional = functional

    def forward(self, x):
        act = F.relu if self.functional else self.relu
        out = act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return act(out + x)


def torchvision_style_resnet(functional: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        TorchvisionBlock(8, functional),
        TorchvisionBlock(8, functional),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _binary_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen = []
    for m in model.modules():
        if isinstance(m, BinaryLayer):
            m.register_forward_hook(lambda mod, i, o: seen.append(mod.binary_input(i[0])))
    model.eval()(x)
    return seen


def test_binarize_warns_when_a_relu_feeds_binary_layers_and_fixes_it():
    """A torchvision-style ResNet: every binary conv is fed by a ReLU (after bn1, or after
    the shortcut of the previous block or the stem), so each sees sign(x) = +1 everywhere:
    binarize says so; act_fix="hardtanh" replaces the ReLUs and the signs are mixed again."""
    x = torch.randn(4, 3, 16, 16)
    model = torchvision_style_resnet()
    with pytest.warns(UserWarning, match=r"inputs of 4 binary layers .* come from .*relu"):
        onebit.binarize(model, method="bireal")
    assert all(bool((b == 1).all()) for b in _binary_inputs(model, x))

    fixed = torchvision_style_resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning left
        onebit.binarize(fixed, method="bireal", act_fix="hardtanh")
    assert isinstance(fixed[4].relu, nn.Hardtanh) and isinstance(fixed[2], nn.Hardtanh)
    assert all(bool((b == -1).any() and (b == 1).any()) for b in _binary_inputs(fixed, x))


def test_binarize_names_a_functional_relu_it_cannot_replace():
    model = torchvision_style_resnet(functional=True)
    with pytest.warns(UserWarning, match=r"functional F.relu in the forward cannot be replaced"):
        onebit.binarize(model, method="bireal", act_fix="hardtanh")
    with pytest.raises(ConfigError, match="act_fix='tanh'"):
        onebit.binarize(torchvision_style_resnet(), act_fix="tanh")
    # weights-only binarization (1w32a) leaves activations alone: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onebit.binarize(torchvision_style_resnet(), method="bireal", bits="1w32a")
