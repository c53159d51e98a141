"""ImageNet-scale models: torchvision-compatible FP ResNets, parameter counts against the
official codes, which layers are binary for each ``bits``, the ReActNet-A block against the
official two-conv wiring, and forward + backward of every model (at 32x32 to stay fast)."""

import re

import pytest
import torch
import torch.nn as nn

import onebit
from onebit.errors import ConfigError, UnknownNameError
from onebit.nn import LearnedRescale, RPReLU, is_binary

# Small-input options: Real-to-Binary's learned rescale is sized for its input.
SMALL = {"real2binary18": {"input_hw": 32}}
IMAGENET_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "birealnet18",
    "birealnet34",
    "birealnet50",
    "reactnet18",
    "reactnet34",
    "reactnet_a",
    "real2binary18",
    "firnet18",
    "mobilenet_v1",
]
# Variants that change the structure (not just the binarizers).
VARIANTS = [
    ("resnet18", {"structure": "bireal"}),
    ("resnet18", {"method": "xnor"}),
    ("real2binary18", {"gate": True}),
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def torchvision_resnet_shapes(depths, bottleneck, num_classes=1000):
    """The state-dict keys and shapes of torchvision's resnet18/34/50, written from its
    layout (torchvision itself is not a dependency)."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        shapes.update({f"{prefix}.{k}": (c,) for k in ("weight", "bias")})
        shapes.update({f"{prefix}.{k}": (c,) for k in ("running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    cin = 64
    for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                cout = 4 * width
                convs = [(width, cin, 1, 1), (width, width, 3, 3), (cout, width, 1, 1)]
            else:
                cout = width
                convs = [(cout, cin, 3, 3), (cout, cout, 3, 3)]
            for k, shape in enumerate(convs, 1):
                shapes[f"{p}.conv{k}.weight"] = shape
                bn(f"{p}.bn{k}", shape[0])
            if (i > 0 and j == 0) or cin != cout:
                shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                bn(f"{p}.downsample.1", cout)
            cin = cout
    shapes["fc.weight"] = (num_classes, cin)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.mark.parametrize(
    "name,depths,bottleneck,params",
    [
        ("resnet18", (2, 2, 2, 2), False, 11_689_512),
        ("resnet34", (3, 4, 6, 3), False, 21_797_672),
        ("resnet50", (3, 4, 6, 3), True, 25_557_032),
    ],
)
def test_fp_resnets_have_torchvision_keys_and_counts(name, depths, bottleneck, params):
    model = onebit.create_model(name, method="fp")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == torchvision_resnet_shapes(depths, bottleneck)
    assert n_params(model) == params
    # a torchvision checkpoint (here: random values of its shapes) loads strictly
    fake = {k: torch.randn(s) if s else torch.tensor(0) for k, s in got.items()}
    model.load_state_dict(fake, strict=True)


# Parameter counts of the official PyTorch models, measured by instantiating each official
# file (see docs/models.md); onebit's defaults must match them.
OFFICIAL_PARAMS = {
    # IR-Net ImageNet/ResNet18/1w1a, minus its unused bn3 = BatchNorm1d(1000) (2,000)
    ("resnet18", ()): 11_690_536,
    ("resnet18", (("structure", "bireal"),)): 11_690_536,
    ("birealnet18", ()): 11_689_512,  # Bi-Real-net pytorch_implementation/BiReal18_34
    ("birealnet34", ()): 21_797_672,
    # BiReal_50 has 25,730,088, incl. a 16 -> 64 1x1 conv (1,024) the first block never uses
    ("birealnet50", ()): 25_729_064,
    ("reactnet18", ()): 11_704_424,  # ReActNet resnet/2_step2
    ("reactnet34", ()): 21_827_432,
    ("reactnet_a", ()): 29_343_592,  # ReActNet mobilenet/2_step2
    ("firnet18", ()): 16_418_344,  # FIRNet imagenet/models_imagenet resnet18_1w1a
    ("mobilenet_v1", ()): 4_231_976,  # Keras MobileNet(alpha=1) trainable parameters
}


@pytest.mark.parametrize("name,options", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_match_the_official_codes(name, options):
    model = onebit.create_model(name, **dict(options))
    assert n_params(model) == OFFICIAL_PARAMS[(name, options)]


def test_real2binary_count_matches_larq_zoo():
    # larq/zoo RealToBinaryNet: 11,995,624 values, BN moving mean/variance included.
    model = onebit.create_model("real2binary18", gate=True)
    running = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_params(model) + running == 11_995_624
    # the strong baseline swaps each gate (C_in*C_in/8 + C_in/8*C_out) for s_h, s_w, s_c
    baseline = onebit.create_model("real2binary18")
    rescales = [m for m in baseline.modules() if isinstance(m, LearnedRescale)]
    assert len(rescales) == 16
    assert rescales[0].scale_h.shape == (1, 1, 56, 1) and rescales[-1].scale_w.shape[-1] == 7


# Conv/linear layers each model keeps full precision for every ``bits`` (regex on names).
FP_LAYERS = {
    "resnet18": r"conv1|fc|layer\d\.0\.downsample\.0",
    "resnet34": r"conv1|fc|layer\d\.0\.downsample\.0",
    "resnet50": r"conv1|fc|layer\d\.0\.downsample\.0",
    "birealnet18": r"conv1|fc|layer\d\.0\.downsample\.1",
    "birealnet34": r"conv1|fc|layer\d\.0\.downsample\.1",
    "birealnet50": r"conv1|fc|layer\d\.0\.downsample\.1|layer1\.0\.conv1|layer\d\.0\.proj",
    "reactnet18": r"conv1|fc|layer\d\.0\.downsample\.1",
    "reactnet34": r"conv1|fc|layer\d\.0\.downsample\.1",
    "reactnet_a": r"conv1|fc",
    "real2binary18": r"conv1|fc|layer\d\.0\.0\.downsample\.1",
    "firnet18": r"conv1|fc|layer\d\.0\.shortcut\.0",
    "mobilenet_v1": r"conv1|fc",
}


@pytest.mark.parametrize("name", IMAGENET_MODELS)
@pytest.mark.parametrize("bits", ["1w1a", "1w32a", "32w1a", "32w32a"])
def test_exactly_the_inner_layers_are_binary(name, bits):
    # the FP-by-default teachers are binarized with IR-Net here
    fp_default = onebit.models.model_entry(name).defaults["method"] == "fp"
    model = onebit.create_model(name, bits=bits, **({"method": "irnet"} if fp_default else {}))
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    fp = {n for n in layers if re.fullmatch(FP_LAYERS[name], n)}
    assert {"conv1", "fc"} <= fp
    binary = {n for n, m in model.named_modules() if is_binary(m)}
    assert binary == (set() if bits == "32w32a" else layers - fp)
    for n in binary:
        layer = model.get_submodule(n)
        assert layer.bits == bits


def test_binary_layer_counts():
    def count(name, **options):
        return sum(is_binary(m) for m in onebit.create_model(name, **options).modules())

    assert count("resnet18") == 16
    assert count("birealnet18") == count("reactnet18") == count("real2binary18") == 16
    assert count("birealnet34") == 32
    assert count("birealnet50") == 3 * 16 - 1  # first block's 1x1 is real-valued
    assert count("reactnet_a") == 26
    assert count("firnet18") == 17  # 16 + the FIR fusion conv
    assert count("mobilenet_v1", method="xnor") == 26


def test_resnet18_structures_and_head():
    normal = onebit.create_model("resnet18")
    bireal = onebit.create_model("resnet18", structure="bireal")
    fp = onebit.create_model("resnet18", method="fp")
    assert isinstance(normal.bn2, nn.BatchNorm1d) and fp.bn2 is None
    assert isinstance(normal.act1, nn.Hardtanh) and isinstance(fp.act1, nn.ReLU)
    block_n, block_b = normal.layer2[0], bireal.layer2[0]
    block_b.load_state_dict(block_n.state_dict())
    x = torch.randn(2, 64, 8, 8)
    normal.eval(), bireal.eval()
    with torch.no_grad():
        shortcut = block_n.downsample(x)
        y = block_n.bn1(block_n.conv1(x))
        expected_normal = nn.functional.hardtanh(
            block_n.bn2(block_n.conv2(nn.functional.hardtanh(y))) + shortcut
        )
        y_b = nn.functional.hardtanh(y + shortcut)
        expected_bireal = nn.functional.hardtanh(block_n.bn2(block_n.conv2(y_b)) + y_b)
        assert torch.allclose(block_n(x), expected_normal)
        assert torch.allclose(block_b(x), expected_bireal)
    with pytest.raises(UnknownNameError, match="bireal"):
        onebit.create_model("resnet18", structure="biereal")


@pytest.mark.parametrize(
    "stem_act,kind",
    [("hardtanh", nn.Hardtanh), ("relu", nn.ReLU), ("prelu", nn.PReLU), ("none", nn.Identity)],
)
def test_stem_act_switch(stem_act, kind):
    for name in ("resnet18", "birealnet18", "reactnet_a", "real2binary18", "firnet18"):
        assert isinstance(onebit.create_model(name, stem_act=stem_act).act1, kind)


def test_method_defaults_set_the_block_activation():
    assert any(isinstance(m, RPReLU) for m in onebit.create_model("reactnet18").modules())
    bireal = onebit.create_model("birealnet18")
    assert not any(isinstance(m, (nn.Hardtanh, nn.ReLU, nn.PReLU)) for m in bireal.modules())
    r2b = onebit.create_model("real2binary18")
    assert sum(isinstance(m, nn.PReLU) for m in r2b.modules()) == 1 + 16
    assert onebit.create_model("firnet18").layer1[0].conv1.alpha is not None  # ReCU scale


def test_reactnet_a_widening_block_equals_the_official_two_convs():
    model = onebit.create_model("reactnet_a").eval()
    block = model.blocks[1]  # 64 -> 128, stride 2
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
        for bn in (block.bn1, block.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
        x = torch.randn(2, 64, 8, 8)
        y = block.act1(block.bn1(block.conv3x3(x)) + nn.functional.avg_pool2d(x, 2))
        assert block(x).shape == (2, 128, 4, 4)
        # official: binary_pw_down1 / down2 (64 -> 64 each), bn2_1 / bn2_2, both + y, concat
        sign_y = torch.where(y + block.conv1x1.act_bias.view(1, -1, 1, 1) >= 0, 1.0, -1.0)
        halves = []
        for half in (slice(0, 64), slice(64, 128)):
            w = block.conv1x1.weight[half]
            w_b = w.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.where(w >= 0, 1.0, -1.0)
            bn = block.bn2
            out = nn.functional.conv2d(sign_y, w_b)
            out = nn.functional.batch_norm(
                out, bn.running_mean[half], bn.running_var[half], bn.weight[half], bn.bias[half]
            )
            halves.append(out + y)
        assert torch.allclose(block(x), block.act2(torch.cat(halves, 1)), atol=1e-5)


def test_reactnet_a_channel_plan_and_strides():
    model = onebit.create_model("reactnet_a")
    plan = [
        (b.conv3x3.in_channels, b.conv1x1.out_channels, b.conv3x3.stride[0]) for b in model.blocks
    ]
    assert plan == [
        (32, 64, 1),
        (64, 128, 2),
        (128, 128, 1),
        (128, 256, 2),
        (256, 256, 1),
        (256, 512, 2),
        *[(512, 512, 1)] * 5,
        (512, 1024, 2),
        (1024, 1024, 1),
    ]


def test_real2binary_rescale_must_match_input_size():
    model = onebit.create_model("real2binary18", num_classes=10)
    with pytest.raises(ConfigError, match="input_hw"):
        model(torch.randn(1, 3, 64, 64))


def test_firnet18_init_follows_the_official_code():
    model = onebit.create_model("firnet18")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1e-8) for bn in bns)
    assert model.fusion.conv.in_channels == 1024 and model.fusion.conv.out_channels == 512


@pytest.mark.parametrize(
    "name,options",
    [(n, {}) for n in IMAGENET_MODELS]
    + VARIANTS
    + [(n, {"method": "fp"}) for n in IMAGENET_MODELS],
)
def test_forward_backward_at_32x32(name, options):
    options = {**SMALL.get(name, {}), **options}
    model = onebit.create_model(name, num_classes=10, **options)
    x = torch.randn(2, 3, 32, 32)  # the last stage is 1x1: every layer still runs
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in weights)
    assert any(w.grad.abs().sum() > 0 for w in weights)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()
