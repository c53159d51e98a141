"""Every registered model: output shape, parameter count, which layers are binary, and a
forward + backward pass for every (model, method) pair."""

import pytest
import torch
import torch.nn as nn

import onebit
from onebit.errors import ConfigError, UnknownNameError
from onebit.nn import BinaryConv2d, BinaryLinear, is_binary
from onebit.quant import METHODS

CIFAR_MODELS = ["resnet20", "resnet18_cifar", "vgg_small", "firnet20", "firnet18_cifar"]

# Parameter counts worked out by hand from the architectures (3 input channels, 10 classes,
# method="fp"); the comments show the sums.
FP_PARAMS = {
    # convs 432 + 13,824 + 50,688 + 202,752; BN2d 1,376; BN1d 128; FC 650  (paper: 0.27 M)
    "resnet20": 269_850,
    # convs 10,987,200; 1x1 shortcuts 172,032 + BN 1,792; BN2d 7,808; BN1d 1,024; FC 5,130
    "resnet18_cifar": 11_174_986,
    # convs 4,574,592; BN 3,584; FC 8,192 * 10 + 10
    "vgg_small": 4_660_106,
    # ResNet-20 convs + fusion 73,728; BN 1,504; learnable biases 672; head 778
    "firnet20": 344_378,
    "firnet18_cifar": None,  # see test_firnet18_cifar_parameter_count
}


def binary_layers(model):
    return [m for m in model.modules() if is_binary(m)]


def test_list_models_and_patterns():
    assert set(CIFAR_MODELS) <= set(onebit.list_models())
    assert onebit.list_models("firnet*") == ["firnet18", "firnet18_cifar", "firnet20"]


@pytest.mark.parametrize("name", [n for n, c in FP_PARAMS.items() if c is not None])
def test_parameter_count(name):
    model = onebit.create_model(name, method="fp")
    assert sum(p.numel() for p in model.parameters()) == FP_PARAMS[name]


def test_firnet18_cifar_parameter_count():
    # ResNet-18 CIFAR stages without the 1x1 shortcuts (FIRNet's are parameter-free):
    resnet18_convs = 1_728 + 147_456 + 516_096 + 2_064_384 + 8_257_536
    half_block = 512 * 512 * 9 + 2 * 512 + 512  # conv, BN, learnable bias
    fusion = 1024 * 512 * 9 + 2 * 512  # conv 2C -> C, BN
    bn = 128 + 4 * (128 + 256 + 512 + 1024)  # stem + two BNs per block
    biases = 2 * 2 * (64 + 128 + 256 + 512)  # two learnable biases per block
    head = 1024 + 5_130
    expected = resnet18_convs + half_block + fusion + bn + biases + head
    model = onebit.create_model("firnet18_cifar", method="fp")
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet20_is_about_027m_and_recu_adds_one_alpha_per_channel():
    fp = sum(p.numel() for p in onebit.create_model("resnet20", method="fp").parameters())
    recu = sum(p.numel() for p in onebit.create_model("resnet20", method="recu").parameters())
    assert 0.26e6 < fp < 0.28e6
    assert recu - fp == 6 * (16 + 32 + 64)


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_forward_backward_every_model_and_method(name, method):
    model = onebit.create_model(name, method=method, num_classes=7, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    latent = [m.weight for m in binary_layers(model)]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in latent)
    model.eval()
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize(
    "bits,weight_binary,act_binary",
    [
        ("1w1a", True, True),
        ("1w32a", True, False),
        ("32w1a", False, True),
        ("32w32a", False, False),
    ],
)
def test_exactly_the_inner_layers_are_binary(name, bits, weight_binary, act_binary):
    model = onebit.create_model(name, method="irnet", bits=bits)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    # first conv and last linear full precision; FP 1x1 shortcut convs of ResNet-18 too
    first, last = convs[0][1], linears[-1][1]
    assert type(first) is nn.Conv2d and type(last) is nn.Linear
    expected_binary = (
        {n for n, m in convs[1:] if m.kernel_size == (3, 3)} if bits != "32w32a" else set()
    )
    got = {n for n, m in model.named_modules() if is_binary(m)}
    assert got == expected_binary
    for n in got:
        layer = model.get_submodule(n)
        assert (layer.weight_spec is not None) == weight_binary
        assert (layer.act_spec is not None) == act_binary
    if bits == "32w32a":
        assert not any(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in model.modules())


def test_block_counts():
    assert len(binary_layers(onebit.create_model("resnet20"))) == 18
    assert len(binary_layers(onebit.create_model("resnet18_cifar"))) == 16
    assert len(binary_layers(onebit.create_model("vgg_small"))) == 5
    assert len(binary_layers(onebit.create_model("firnet20"))) == 19
    assert len(binary_layers(onebit.create_model("firnet18_cifar"))) == 18


def test_method_implies_block_activation_and_downsample():
    acts = {type(m) for m in onebit.create_model("resnet20", method="bireal").modules()}
    assert nn.Hardtanh not in acts
    irnet = onebit.create_model("resnet20", method="irnet")
    recu = onebit.create_model("resnet20", method="recu")
    assert irnet.stages[1][0].downsample.mode == "subsample"
    assert recu.stages[1][0].downsample.mode == "avgpool"
    relu = onebit.create_model("resnet20", method="irnet", block_act="relu")
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())
    react = onebit.create_model("resnet20", method="reactnet")
    assert any(isinstance(m, onebit.nn.RPReLU) for m in react.modules())


def test_resnet20_downsampling_shortcuts_follow_the_official_codes():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    sub = onebit.nn.ChannelPadShortcut(4, 8, "subsample")(x)
    avg = onebit.nn.ChannelPadShortcut(4, 8, "avgpool")(x)
    assert sub.shape == avg.shape == (2, 8, 2, 2)
    assert torch.equal(sub[:, 2:6], x[:, :, ::2, ::2]) and sub[:, :2].abs().sum() == 0
    assert torch.equal(avg[:, 2:6], nn.functional.avg_pool2d(x, 2))


def shuffle2(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


@pytest.mark.parametrize("groups", [2, 3])
def test_channel_shuffle_cat_is_shuffle_of_cat_forward_and_backward(groups):
    shuffle = onebit.nn.ChannelShuffle(groups)
    parts = [torch.randn(2, 4, 3, 3, requires_grad=True) for _ in range(groups)]
    weight = torch.randn(2, 4 * groups, 3, 3)
    fused = shuffle.cat(parts)
    reference = shuffle(torch.cat(parts, dim=1))
    assert torch.equal(fused, reference)
    if groups == 2:
        assert torch.equal(fused, shuffle2(torch.cat(parts, dim=1)))
    fused_grads = torch.autograd.grad((fused * weight).sum(), parts)
    reference_grads = torch.autograd.grad((reference * weight).sum(), parts)
    assert all(torch.equal(a, b) for a, b in zip(fused_grads, reference_grads, strict=True))
    with pytest.raises(ValueError, match=f"takes {groups} tensors"):
        shuffle.cat(parts[:1])


def firnet_block_reference(block, x):
    """The official FIRNet BasicBlock forward, written out with the block's own layers."""
    cin, cout = block.cin, block.cout
    active, idle = x[:, :cin], x[:, cin:]
    residual = active
    out = block.bn1(block.conv1(active))
    if block.downsamples:
        residual = nn.functional.pad(
            nn.functional.avg_pool2d(active, 2), (0, 0, 0, 0, cout // 4, cout // 4)
        )
        idle = nn.functional.avg_pool2d(x, 2)
    out = nn.functional.hardtanh(out + residual)
    out = shuffle2(torch.cat([out, idle + block.move0.bias], 1))
    active, idle = out[:, :cout], out[:, cout:]
    out = nn.functional.hardtanh(block.bn2(block.conv2(active)) + active)
    return shuffle2(torch.cat([out, idle + block.move1.bias], 1))


@pytest.mark.parametrize("stage", [0, 1])
def test_firnet_block_matches_the_official_wiring(stage):
    model = onebit.create_model("firnet20", method="recu").eval()
    block = model.stages[stage][0]
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, onebit.nn.LearnableBias):
                m.bias.normal_()
        x = torch.randn(2, 2 * block.cin, 8, 8)
        assert torch.allclose(block(x), firnet_block_reference(block, x))
        assert block(x).shape == (2, 2 * block.cout, 8 // (1 + stage), 8 // (1 + stage))


def test_firnet_fusion_is_binary_conv_2c_to_c_plus_first_half():
    model = onebit.create_model("firnet20", method="recu").eval()
    fusion = model.fusion
    x = torch.randn(2, 128, 4, 4)
    with torch.no_grad():
        expected = nn.functional.hardtanh(fusion.bn(fusion.conv(x)) + x[:, :64])
        assert torch.allclose(fusion(x), expected)
    assert fusion.conv.in_channels == 128 and fusion.conv.out_channels == 64
    assert is_binary(fusion.conv)


def test_create_model_errors_name_the_problem():
    with pytest.raises(UnknownNameError, match="resnet20"):
        onebit.create_model("resnet21")
    with pytest.raises(ConfigError, match="no option 'widht'"):
        onebit.create_model("resnet20", widht=2)
    with pytest.raises(ConfigError, match="1w1a"):
        onebit.create_model("resnet20", bits="2w2a")
    with pytest.raises(UnknownNameError, match="hardtanh"):
        onebit.create_model("resnet20", block_act="hardtan")


def test_model_remembers_its_spec():
    m = onebit.create_model("resnet20", method="recu", in_chans=1)
    assert m.onebit_spec["name"] == "resnet20"
    assert m.onebit_spec["options"]["method"] == "recu"
    assert m.onebit_spec["options"]["in_chans"] == 1
    assert m.onebit_spec["options"]["bits"] == "1w1a"


@pytest.mark.parametrize(
    "size", [(28, 28), (1, 1, -28, 28), 28, "1x28x28", (0, 1, 28, 28), (True, 8, 8)]
)
def test_count_ops_and_summary_name_a_bad_input_size(size):
    model = onebit.create_model("resnet20", in_chans=1, num_classes=10)
    for fn in (onebit.count_ops, onebit.summary):
        with pytest.raises(ValueError, match=r"is not \(C, H, W\) or \(N, C, H, W\) of positive"):
            fn(model, size)
