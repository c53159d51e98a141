"""Export to the graph file (format 2): every deployable zoo model and a binarize()d user model
run by the reference interpreter and by the C runtime equal the model; unsupported ops,
format-1 files and corrupt files are one-line ExportErrors."""

import random
import re
import zlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import onebit
from conftest import make_dyadic, write_format_1
from onebit import deploy
from onebit.data import InputSpec
from onebit.deploy import format as fmt
from onebit.deploy.export import export_graph
from onebit.deploy.graph import HEADER, NODE_SIZE, graph_bytes, read_graph
from onebit.deploy.graph_ref import GraphReference
from onebit.errors import ExportError
from onebit.nn import BATCHNORMS, ChannelShuffle, LeakyClip, LearnableBias
from onebit.nn.binary import BinaryLayer
from onebit.quant import METHODS

CIFAR = [
    ("resnet20", {}),
    ("resnet20", {"bits": "1w32a", "structure": "normal", "block_act": "relu", "head_act": "relu"}),
    ("resnet18_cifar", {}),
    ("vgg_small", {}),
    ("firnet20", {}),
    ("firnet18_cifar", {}),
    ("birealnet20", {}),
    ("birealnet8", {}),
    ("wrn10", {}),
    ("wrn10", {"method": "xnor"}),
    ("wrn22", {}),
]
# ImageNet-scale models at 64x64 (every stage keeps at least one pixel)
IMAGENET = [
    ("resnet18", {}),
    ("resnet18", {"structure": "bireal", "downsample": "avgpool_conv"}),
    ("resnet34", {}),
    ("resnet50", {}),
    ("birealnet18", {}),
    ("birealnet34", {}),
    ("birealnet50", {}),
    ("reactnet18", {}),
    ("reactnet34", {}),
    ("reactnet_a", {}),
    ("real2binary18", {"input_hw": 64}),
    ("real2binary18", {"input_hw": 64, "gate": True}),
    ("firnet18", {}),
    ("mobilenet_v1", {}),
]
# every binarization method on the smallest model
METHOD_CASES = [("resnet20", {"method": m}) for m in METHODS if m != "fp"]


def spec_of(size: int) -> InputSpec:
    return InputSpec(channels=3, size=size, mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.5))


@torch.no_grad()
def trained_like(model: nn.Module, size: int) -> nn.Module:
    """``model`` with non-trivial shifts, slopes and BatchNorm statistics (two training-mode
    passes), in eval mode, its BatchNorms, weight scales and alphas rounded to values whose
    products and sums are exact in fp32 (var + eps a power of 4, gamma and alpha powers of
    two, means and betas multiples of 1/16): the folded ``dot * out_scale + out_bias`` is then
    the very number PyTorch's conv -> BatchNorm gives, so near-zero signs cannot flip."""
    for m in model.modules():
        for p in (getattr(m, "act_bias", None), getattr(m, "bias", None)):
            if isinstance(m, (LearnableBias, BinaryLayer)) and isinstance(p, nn.Parameter):
                p.normal_(0.0, 0.2)
        if isinstance(m, nn.PReLU):
            m.weight.uniform_(0.0, 0.5)
    model.train()
    for _ in range(2):
        model(torch.randn(8, 3, size, size))
    model.eval()
    return make_dyadic(model)


def check_export(model: nn.Module, size: int, path) -> tuple[dict, GraphReference]:
    """Export ``model``, run the file's graph and the model on one random batch: the logits
    agree to fp32 rounding and the argmax is identical. Returns (meta, reference)."""
    meta = export_graph(model, path, spec_of(size))
    reference = GraphReference.from_file(path)
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    out = reference(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(out.argmax(1), expected.argmax(1))
    deployed = deploy.load(path)(x)  # the C runtime: the same to fp32 rounding
    torch.testing.assert_close(deployed, expected, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(deployed.argmax(1), expected.argmax(1))
    vectors = ("scale", "bias", "slope", "out_scale", "out_bias", "act_bias")
    for node in reference.nodes:  # per-channel tensors are (C,) as the op table says
        if node.op != "rescale_hw":
            shapes = {k: reference.tensors[t].dim() for k, t in node.tensors.items()}
            assert all(d == 1 for k, d in shapes.items() if k in vectors), (node.name, shapes)
    return meta, reference


def packable(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, BinaryLayer) and m.bits == "1w1a"]


def zoo_cases() -> list:
    cases = [(n, o, 32) for n, o in CIFAR + METHOD_CASES] + [(n, o, 64) for n, o in IMAGENET]
    return cases


@pytest.mark.parametrize("name,options,size", zoo_cases())
def test_zoo_model_runs_from_its_graph_file(name, options, size, tmp_path, one_thread):
    torch.manual_seed(0)
    model = trained_like(onebit.create_model(name, num_classes=10, **options), size)
    meta, reference = check_export(model, size, tmp_path / "m.onebit")
    ops = [node.op for node in reference.nodes]
    assert sorted(meta["packed"]) == sorted(packable(model))
    assert ops.count("bconv2d") == len(meta["packed"])
    # every BatchNorm is folded into the bconv2d before it, or an affine op of its own
    bns = {n for n, m in model.named_modules() if isinstance(m, BATCHNORMS)}
    affine = [node.name for node in reference.nodes if node.op == "affine" and node.name in bns]
    assert sorted(meta["folded"] + affine) == sorted(bns)
    assert meta["model"]["name"] == name and meta["model"]["options"]["num_classes"] == 10
    assert InputSpec.from_json(meta["input"], "meta") == spec_of(size)
    record = reference.input_record
    assert (record.channels, record.height, record.num_classes) == (3, size, 10)
    assert record.mean == pytest.approx((0.5, 0.4, 0.3))
    binary = {n for n, m in model.named_modules() if isinstance(m, BinaryLayer)}
    assert set(meta["float_binary"]) == binary - set(meta["packed"])


class Block(nn.Module):
    """A torchvision-style basic block (the shape of a user's own ResNet)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class UserResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_binarized_user_resnet_runs_from_its_graph_file(tmp_path, one_thread):
    torch.manual_seed(0)
    model = onebit.binarize(UserResNet(), method="xnor", act_fix="hardtanh")
    model = trained_like(model, 32)
    meta, reference = check_export(model, 32, tmp_path / "m.onebit")
    assert sorted(meta["packed"]) == sorted(packable(model)) and len(meta["packed"]) == 8
    assert sorted(meta["folded"]) == sorted(
        n.replace("conv", "bn").replace("downsample.0", "downsample.1") for n in meta["packed"]
    )
    assert meta["model"]["name"] is None and meta["model"]["class"].endswith("UserResNet")
    assert [n.op for n in reference.nodes].count("hardtanh") == 7  # act_fix's ReLUs


class EveryCall(nn.Module):
    """The calls the zoo does not make but a user model may: functional activations and
    pools, channel chunks, slices and pads, a ChannelShuffle module, a stack + flatten channel
    interleave, constants, view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding="same")
        self.binary = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.shuffle = ChannelShuffle(4)
        self.clip = LeakyClip()
        self.leaky = nn.LeakyReLU(0.2)
        self.relu6 = nn.ReLU6()
        self.drop = nn.Dropout(0.5)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.leaky(self.conv(x))
        x = self.bn(self.binary(x)) * self.scale + 0.25
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([F.hardtanh(b, -0.5, 0.5), a, x[:, 2:6], F.relu(a)], dim=1) * 0.5
        x = self.clip(self.shuffle(x[:, :8]))  # 16 channels -> 8, shuffled
        x = torch.stack([x[:, 4:], x[:, :4]], dim=2).flatten(1, 2)  # an interleave by hand
        x = F.max_pool2d(x, 2) + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        y = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))  # option-A shortcut by hand
        y = self.relu6(y) + F.adaptive_avg_pool2d(y, 1) * torch.sigmoid(y)
        return self.fc(self.drop(y.view(y.size(0), -1)))


def test_user_model_calls_outside_the_zoo(tmp_path, one_thread):
    torch.manual_seed(0)
    model = onebit.binarize(EveryCall(), method="bireal", keep_first=True)
    model = trained_like(model, 16)
    _, reference = check_export(model, 16, tmp_path / "m.onebit")
    ops = {node.op for node in reference.nodes}
    assert {"bconv2d", "subsample_pad", "channel_shuffle", "leaky_clip", "prelu"} <= ops
    assert [n.op for n in reference.nodes].count("channel_shuffle") == 2
    assert {"concat", "affine", "maxpool2d", "avgpool2d", "mul", "global_avgpool"} <= ops
    crops = [n.iattr for n in reference.nodes if n.op == "subsample_pad"]
    assert {"stride_h": 1, "stride_w": 1, "pad_before": -2, "pad_after": -2} in crops  # [2:6]


def test_default_spec_and_class_names_of_a_registry_model(tmp_path):
    model = onebit.create_model("birealnet8", in_chans=1)
    meta = deploy.export(model, tmp_path / "m.onebit", accuracy={"val_top1": 91.5})
    nodes, _, record, stored = read_graph((tmp_path / "m.onebit").read_bytes(), "m")
    assert stored == meta and meta["accuracy"] == {"val_top1": 91.5}
    assert meta["format"] == "onebit-graph" and meta["version"] == 2
    assert meta["class_names"][:2] == ["T-shirt/top", "Trouser"]  # Fashion-MNIST's
    assert (record.channels, record.height, record.transform, record.raw_height) == (
        1,
        32,
        "pad",
        28,
    )
    assert meta["nodes"] == [n.name for n in nodes]


class Attention(nn.Module):
    def forward(self, x):
        return x * torch.softmax(x, dim=1)


class AttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()

    def forward(self, x):
        return self.attn(x)


class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.layer3 = nn.ModuleList([AttentionBlock()])
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.layer3[0](self.conv(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_an_unsupported_op_is_named_with_its_layer(tmp_path):
    with pytest.raises(ExportError) as err:
        export_graph(WithAttention(), tmp_path / "m.onebit", spec_of(8))
    assert str(err.value) == (
        "cannot export layer3.0.attn (torch.softmax): the runtime has no such op"
    )
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(ExportError, match=r"^cannot export 1 \(GELU\): the runtime has no such"):
        export_graph(model, tmp_path / "m.onebit", spec_of(8))
    grouped = onebit.create_model("mobilenet_v1", method="xnor", num_classes=10)
    with pytest.raises(ExportError, match=r"blocks.0.dw \(BinaryConv2d 1w1a, groups 32\)"):
        export_graph(grouped, tmp_path / "m.onebit", spec_of(32))
    assert not (tmp_path / "m.onebit").exists()


def test_what_export_refuses_is_one_line(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ExportError, match=r"torch\.fx cannot trace its forward"):
        export_graph(Branchy(), tmp_path / "m.onebit", spec_of(8))
    with pytest.raises(ExportError, match="without an input spec"):
        export_graph(UserResNet(), tmp_path / "m.onebit")
    model = onebit.create_model("resnet20")
    with pytest.raises(ExportError, match="stores full-precision tensors as fp32 only"):
        deploy.export(model, tmp_path / "m.onebit", fp16=True)
    with pytest.raises(ExportError, match="does not run on a float batch"):
        export_graph(model, tmp_path / "m.onebit", InputSpec(1, 32, (0.5,), (0.5,)))


def test_a_format_1_file_says_to_export_again(tmp_path):
    path = tmp_path / "old.onebit"
    write_format_1(path)
    message = "export the model again with `onebit export RUN FILE`"
    with pytest.raises(ExportError, match=message):
        fmt.check_format(path)
    with pytest.raises(ExportError, match=message):
        deploy.load(path)
    (tmp_path / "text.onebit").write_text("hello, world")
    with pytest.raises(ExportError, match=r"not a \.onebit file"):
        fmt.check_format(tmp_path / "text.onebit")
    export_graph(UserResNet(), tmp_path / "new.onebit", spec_of(8))
    fmt.check_format(tmp_path / "new.onebit")
    assert fmt.is_deploy_file(tmp_path / "new.onebit") and fmt.is_deploy_file(path)


@pytest.fixture(scope="module")
def firnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "firnet20.onebit"
    export_graph(onebit.create_model("firnet20"), path, spec_of(32))
    return path


def test_reader_and_writer_agree_byte_for_byte(firnet_file):
    data = firnet_file.read_bytes()
    nodes, tensors, record, meta = read_graph(data, "f")
    meta = {k: v for k, v in meta.items() if k not in ("nodes", "tensors")}
    assert graph_bytes(nodes, dict(tensors), record, meta) == data


def test_corrupt_graph_files_are_one_line_export_errors(firnet_file):
    data = firnet_file.read_bytes()
    rng = random.Random(0)
    cases = [data[: rng.randrange(len(data))] for _ in range(30)]
    for _ in range(60):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for case in cases:
        with pytest.raises(ExportError) as err:
            read_graph(case, "bad.onebit")
        assert str(err.value).startswith("bad.onebit: ") and "\n" not in str(err.value)


def with_crc(data: bytearray) -> bytes:
    """``data`` with its checksum recomputed (a file another tool wrote, wrong but sealed)."""
    data[24:28] = zlib.crc32(bytes(data[32:])).to_bytes(4, "little")
    return bytes(data)


def test_a_bad_entry_under_a_valid_checksum_is_refused(firnet_file):
    data = firnet_file.read_bytes()
    nodes, tensors, record, meta = read_graph(data, "f")
    fields = HEADER.unpack_from(data)
    node_table, tensor_table = fields[9], fields[8]
    k = next(i for i, n in enumerate(nodes) if n.op == "bconv2d")
    entry = node_table + k * NODE_SIZE
    cases = {
        "reads a value not computed before it": (entry + 8, k + 1),  # inputs[0]: itself
        "unknown op code 99": (entry, 99),
        "tensor slot out_scale is 9999": (entry + 28, 9999),  # tensors[1]
        "an unused tensor slot or attribute is set": (entry + 44, 0),  # tensors[5]
        "tensor entry 0: dims": (tensor_table + 8, 0),  # dims[0] = 0
    }
    for message, (offset, value) in cases.items():
        bad = bytearray(data)
        bad[offset : offset + 4] = value.to_bytes(4, "little", signed=True)
        with pytest.raises(ExportError, match=re.escape(message)):
            read_graph(with_crc(bad), "f")
    slots = dict(nodes[k].tensors, out_scale=nodes[k].tensors["weight_bits"])
    nodes[k].tensors = slots  # a u64 tensor where an f32 one belongs
    meta = {key: v for key, v in meta.items() if key not in ("nodes", "tensors")}
    with pytest.raises(ExportError, match="slot out_scale is not f32"):
        read_graph(graph_bytes(nodes, dict(tensors), record, meta), "f")
