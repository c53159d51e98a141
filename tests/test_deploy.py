"""Export to a .onebit graph file and the deployed model (the C runtime through
``onebit.deploy.load``): equivalence with the trained model, what export refuses, file checks,
kernel selection, raw-image prediction and the CLI."""

import gzip
import json
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import onebit
from conftest import make_dyadic, write_format_1
from onebit import deploy
from onebit.cli import main
from onebit.data import InputSpec
from onebit.deploy import engine
from onebit.deploy.graph import (
    CRC_FROM,
    HEADER,
    NODE_SIZE,
    InputRecord,
    Node,
    graph_bytes,
    read_graph,
)
from onebit.deploy.runtime import Runtime
from onebit.errors import ExportError
from onebit.nn import LearnableBias
from onebit.nn.binary import BinaryLayer
from onebit.profile import deployed_bytes
from onebit.quant import METHODS

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
FMNIST_SPEC = InputSpec(1, 32, (0.2860,), (0.3530,))

# src bug (runtime/src/load.c, ops.c): graph.py lets subsample_pad's pads be negative (channels
# removed, as F.pad: the exporter writes them for channel slices and splits, FIRNet's), the C
# runtime refuses them at load ("pad_after is -16, it must be in 0..65536")
# Every CIFAR-scale model family, at its default method.
FAMILIES = [
    ("resnet20", {}),
    ("resnet18_cifar", {}),
    ("vgg_small", {}),
    ("firnet20", {}),
    ("firnet18_cifar", {}),
]
# ImageNet-scale families, fed 32x32 Fashion-MNIST (stem and pooling still apply); their deep
# full-precision residual streams (learnable shifts, RPReLU) are not dyadic, so they are
# checked to fp32 rounding
IMAGENET_FAMILIES = [
    ("resnet18", {}),
    ("resnet18", {"structure": "bireal"}),
    ("birealnet18", {}),
    ("reactnet18", {}),
    ("reactnet_a", {}),
    ("real2binary18", {"input_hw": 32, "gate": True}),
    ("firnet18", {}),
]
# every binarization method, on the smallest family
METHOD_CASES = [("resnet20", {"method": m}) for m in METHODS if m != "fp"]


def fashion_mnist(n: int, offset: int = 0) -> torch.Tensor:
    """``n`` Fashion-MNIST test images, padded 28 -> 32 and normalised, (n, 1, 32, 32)."""
    with gzip.open(FMNIST) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    x = torch.from_numpy(raw[offset : offset + n].astype(np.float32) / 255.0)
    return (nn.functional.pad(x, (2, 2, 2, 2)) - 0.2860) / 0.3530


@torch.no_grad()
def trained_like(name: str, options: dict, dyadic: bool = True) -> nn.Module:
    """A registry model (in_chans 1) with non-trivial learnable shifts and BatchNorm running
    statistics from training-mode passes on Fashion-MNIST, in eval mode.

    ``dyadic=True`` then rounds every BatchNorm's affine map and every weight scale to values
    whose products and sums are exact in fp32 (var + eps a power of 4, gamma and alpha powers
    of two, means and betas multiples of 1/16): the folded ``dot * out_scale + out_bias`` and
    PyTorch's BatchNorm of the binary conv's output are then the same number, not just close,
    so each bconv2d must reproduce its layer bit for bit, sign flips at exact zeros included.
    """
    model = onebit.create_model(name, in_chans=1, **options)
    for m in model.modules():
        if isinstance(m, LearnableBias) or (isinstance(m, BinaryLayer) and m.act_spec):
            for p in (getattr(m, "act_bias", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter) and p.dim() >= 1:
                    p.normal_(0.0, 0.2)
    model.train()
    for i in range(2):
        model(fashion_mnist(32, 1000 + 32 * i))
    model.eval()
    if dyadic:
        make_dyadic(model)
    return model


def assert_logits_close(out, expected, rtol: float = 1e-5) -> None:
    """Logits within fp32 rounding of the model's (the runtime's float convs sum in another
    order than PyTorch's) and the very same argmax."""
    out, expected = torch.as_tensor(out), expected.detach()
    scale = float(expected.abs().max())
    torch.testing.assert_close(out, expected, rtol=rtol, atol=rtol * scale)
    assert torch.equal(out.argmax(1), expected.argmax(1))


@torch.no_grad()
def check_binary_layers(model: nn.Module, path: Path, x: torch.Tensor, exact: bool) -> int:
    """Run each bconv2d node of the file alone (a one-node graph) on the input its layer got in
    the model: the output equals the layer's output, or its BatchNorm's where the export folded
    one (``exact``: bit for bit, else to fp32 rounding). Returns the number of nodes checked."""
    nodes, tensors, _, meta = read_graph(path.read_bytes(), str(path))
    bconvs = [n for n in nodes if n.op == "bconv2d"]
    names = {n.name for n in bconvs}
    assert names == set(meta["packed"])
    seen, keep = {}, []  # keep: the hooked tensors stay alive, so their ids stay theirs

    def hook(name):
        def record(module, args, output):
            keep.extend([args[0], output])
            seen[name] = (id(args[0]), args[0].clone(), id(output), output.clone())

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    handles += [model.get_submodule(n).register_forward_hook(hook(n)) for n in meta["folded"]]
    model(x)
    for h in handles:
        h.remove()
    after = {}
    for bn in meta["folded"]:  # the packed layer whose output the BatchNorm reads
        layer = [n for n in names if seen[n][2] == seen[bn][0]]
        assert len(layer) == 1, bn
        after[layer[0]] = seen[bn][3]
    assert len(after) == len(meta["folded"])
    for node in bconvs:
        _, given, _, output = seen[node.name]
        want = after.get(node.name, output)
        given = given.reshape(len(x), given.shape[1], *given.shape[2:], *[1] * (4 - given.dim()))
        one = [Node("bconv2d", [0], node.tensors, node.iattr), Node("flatten", [1])]
        used = {name: tensors[name] for name in node.tensors.values()}
        record = InputRecord(*given.shape[1:], want[0].numel())
        with Runtime.from_bytes(graph_bytes(one, used, record, {})) as rt:
            got = torch.from_numpy(rt(given.numpy())).reshape(want.shape)
        if exact:
            assert torch.equal(got, want), node.name
        else:
            scale = float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale, msg=node.name)
    return len(bconvs)


def graph_ops(path: Path) -> list[Node]:
    return read_graph(path.read_bytes(), str(path))[0]


@pytest.mark.parametrize("name,options", FAMILIES + METHOD_CASES)
def test_deployed_model_equals_the_model(name, options, tmp_path, one_thread):
    """The argmax is the model's and the logits agree to fp32 rounding; every bconv2d, fed its
    layer's input, is that layer followed by its (folded) BatchNorm bit for bit."""
    model = trained_like(name, options)
    path = tmp_path / "m.onebit"
    meta = deploy.export(model, path)
    deployed = deploy.load(path)
    x = fashion_mnist(16)
    with torch.no_grad():
        expected = model(x)
    out = deployed(x)  # a torch batch in, a torch batch out
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert_logits_close(out, expected)
    numpy_out = deployed(x.numpy())  # numpy in, numpy out: the same numbers
    assert isinstance(numpy_out, np.ndarray) and np.array_equal(numpy_out, out.numpy())
    binary = [
        n for n, m in model.named_modules() if isinstance(m, BinaryLayer) and m.bits == "1w1a"
    ]
    assert sorted(meta["packed"]) == sorted(binary) and binary
    assert meta["folded"]  # BatchNorm folding really happened
    nodes = graph_ops(path)
    assert not any(n.op == "affine" and n.name in meta["folded"] for n in nodes)
    assert check_binary_layers(model, path, x[:4], exact=True) == len(binary)


@pytest.mark.parametrize("name,options", IMAGENET_FAMILIES)
def test_imagenet_families_at_small_input(name, options, tmp_path, one_thread):
    model = trained_like(name, options)
    meta = deploy.export(model, tmp_path / "m.onebit", input_spec=FMNIST_SPEC)
    deployed = deploy.load(tmp_path / "m.onebit")
    x = fashion_mnist(8)
    with torch.no_grad():
        expected = model(x)
    assert_logits_close(deployed(x), expected, rtol=1e-4)
    binary = [
        n for n, m in model.named_modules() if isinstance(m, BinaryLayer) and m.bits == "1w1a"
    ]
    assert sorted(meta["packed"]) == sorted(binary) and binary


@pytest.mark.parametrize("name", ["resnet18_cifar", "firnet20"])
def test_folded_layers_match_with_raw_batchnorm_statistics(name, tmp_path, one_thread):
    """With unrounded statistics, each bconv2d (BatchNorm folded) fed the model's own input
    reproduces the model's conv -> BatchNorm output to fp32 rounding; end to end the logits
    agree to float tolerance and the argmax is identical."""
    model = trained_like(name, {"method": "xnor"}, dyadic=False)
    meta = deploy.export(model, tmp_path / "m.onebit")
    x = fashion_mnist(8)
    assert check_binary_layers(model, tmp_path / "m.onebit", x, exact=False) == len(meta["folded"])
    with torch.no_grad():
        expected = model(x)
    assert_logits_close(deploy.load(tmp_path / "m.onebit")(x), expected, rtol=1e-4)


def test_binary_weights_with_real_activations_run_as_float_convs(tmp_path, one_thread):
    """1w32a: every binary layer is a float conv of its sign x scale weights; 32w1a (binary
    inputs, real weights) has no op of the runtime and is refused with one line."""
    model = trained_like("resnet20", {"bits": "1w32a"}, dyadic=False)
    meta = deploy.export(model, tmp_path / "m.onebit")
    assert meta["packed"] == [] and len(meta["float_binary"]) == 18
    assert not any(n.op == "bconv2d" for n in graph_ops(tmp_path / "m.onebit"))
    x = fashion_mnist(4)
    with torch.no_grad():
        expected = model(x)
    # real activations through 18 float convs and hardtanh: fp32 rounding grows (the
    # reference interpreter, PyTorch convs too, is as far from the model)
    assert_logits_close(deploy.load(tmp_path / "m.onebit")(x), expected, rtol=5e-3)
    model = onebit.create_model("resnet20", in_chans=1, bits="32w1a")
    with pytest.raises(ExportError) as err:
        deploy.export(model, tmp_path / "a.onebit")
    assert "BinaryConv2d 32w1a" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "a.onebit").exists()


def test_fp16_export_is_refused(tmp_path):
    """The graph file stores full-precision tensors as fp32 only (format 1's fp16 files are
    gone): export says so in one line and writes nothing."""
    model = onebit.create_model("resnet20", in_chans=1)
    with pytest.raises(ExportError, match="fp32 only") as err:
        deploy.export(model, tmp_path / "m.onebit", fp16=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onebit").exists()


class SmallNet(nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.Hardtanh(),
            nn.Conv2d(16, 70, 3, stride=2, padding=1),
            nn.BatchNorm2d(70),
            nn.Hardtanh(),
            nn.Conv2d(70, 32, 3, padding=1, groups=groups),
            nn.BatchNorm2d(32),
            nn.Hardtanh(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 16 * 16, 100), nn.BatchNorm1d(100), nn.Linear(100, 10)
        )

    def forward(self, x):
        return self.head(self.features(x))


def binarized_small_net(groups: int = 1) -> nn.Module:
    torch.manual_seed(0)
    model = onebit.binarize(SmallNet(groups), method="reactnet")
    model.train()
    with torch.no_grad():
        model(fashion_mnist(32))
    return model.eval()


def test_binarized_user_model_loads_from_the_file_alone(tmp_path, one_thread):
    """No model instance is needed to load: the file is the network (its class is only named
    in the meta). A binary linear's BatchNorm1d is folded as a conv's BatchNorm2d."""
    model = binarized_small_net()
    meta = deploy.export(model, tmp_path / "m.onebit", input_spec=FMNIST_SPEC)
    assert meta["packed"] == ["features.3", "features.6", "head.1"]
    assert meta["folded"] == ["features.4", "features.7", "head.2"]
    assert meta["model"]["name"] is None and meta["model"]["class"].endswith("SmallNet")
    deployed = deploy.load(tmp_path / "m.onebit")
    x = fashion_mnist(8)
    with torch.no_grad():
        expected = model(x)
    assert_logits_close(deployed(x), expected, rtol=1e-4)
    assert check_binary_layers(model, tmp_path / "m.onebit", x, exact=False) == 3
    # a grouped 1w1a conv has no runtime op: refused with one line naming the layer
    with pytest.raises(ExportError, match=r"^cannot export features\.6 .*groups 2") as err:
        deploy.export(binarized_small_net(groups=2), tmp_path / "g.onebit", input_spec=FMNIST_SPEC)
    assert "\n" not in str(err.value) and not (tmp_path / "g.onebit").exists()


def test_untraceable_model_is_refused_with_one_line(tmp_path):
    """Format 1 fell back to an unfolded export that needed the model class at load; a graph
    file needs the traced graph, so export refuses and writes nothing."""

    class Branchy(SmallNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    model = onebit.binarize(Branchy(), method="xnor").eval()
    with pytest.raises(ExportError, match=r"torch\.fx cannot trace its forward") as err:
        deploy.export(model, tmp_path / "m.onebit", input_spec=FMNIST_SPEC)
    assert "\n" not in str(err.value) and not (tmp_path / "m.onebit").exists()


# --------------------------------------------------------------------------- kernels


def test_each_kernel_and_the_env_variable(tmp_path, monkeypatch):
    model = trained_like("resnet18_cifar", {"method": "reactnet"})
    deploy.export(model, tmp_path / "m.onebit")
    x = fashion_mnist(8).numpy()
    kernels = deploy.available_kernels()
    assert kernels[-1] == "portable" and set(kernels) <= set(engine.KERNELS)
    outputs = {k: deploy.load(tmp_path / "m.onebit", kernel=k)(x) for k in kernels}
    assert all(np.array_equal(o, outputs["portable"]) for o in outputs.values())
    assert deploy.load(tmp_path / "m.onebit").kernel == kernels[0]  # auto: the best
    threaded = deploy.load(tmp_path / "m.onebit", threads=2)
    assert np.array_equal(threaded(x), outputs["portable"])
    monkeypatch.setenv(deploy.KERNEL_ENV, "portable")
    assert deploy.load(tmp_path / "m.onebit").kernel == "portable"
    assert deploy.load(tmp_path / "m.onebit", kernel=kernels[0]).kernel == kernels[0]
    monkeypatch.setenv(deploy.KERNEL_ENV, "fastest")
    with pytest.raises(ExportError, match=r"unknown kernel 'fastest' \(from ONEBIT_KERNEL\)"):
        deploy.load(tmp_path / "m.onebit")
    with pytest.raises(ExportError, match=r"unknown kernel 'reference' \(from kernel=\)"):
        deploy.load(tmp_path / "m.onebit", kernel="reference")


def test_a_kernel_the_cpu_lacks_is_refused(tmp_path, monkeypatch):
    deploy.export(onebit.create_model("resnet20", in_chans=1), tmp_path / "m.onebit")
    lacking = [k for k in engine.KERNELS if k not in deploy.available_kernels()]
    for kernel in lacking:  # neon on x86-64, the x86 ones on aarch64
        with pytest.raises(ExportError, match=f"kernel '{kernel}' does not run on this CPU") as e:
            deploy.load(tmp_path / "m.onebit", kernel=kernel)
        assert "\n" not in str(e.value)
    # a CPU without AVX-512: auto takes AVX2, and AVX-512 is refused naming what runs
    monkeypatch.setattr(engine, "available_kernels", lambda: ["avx2", "portable"])
    assert deploy.select_kernel("auto") == "avx2"
    with pytest.raises(ExportError, match=r"'avx512' does not run on .*available here: avx2, port"):
        deploy.select_kernel("avx512")


# ----------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def reactnet_file(tmp_path_factory):
    model = trained_like("resnet20", {"method": "reactnet"}, dyadic=False)
    path = tmp_path_factory.mktemp("file") / "m.onebit"
    deploy.export(model, path)
    return path


def with_crc(data: bytes | bytearray) -> bytes:
    """``data`` with its checksum recomputed: a file another tool wrote, sealed but wrong."""
    data = bytearray(data)
    data[24:28] = struct.pack("<I", zlib.crc32(bytes(data[CRC_FROM:])))
    return bytes(data)


def test_fuzzed_files_raise_one_line_export_errors(reactnet_file, tmp_path):
    """Truncations and bit flips anywhere: an ExportError of one line naming the file, never
    another exception (the checksum catches every flip); bytes appended too."""
    data = reactnet_file.read_bytes()
    x = fashion_mnist(2)
    rng = random.Random(0)
    cases = [data[: rng.randrange(len(data))] for _ in range(40)]
    for _ in range(80):
        flipped = bytearray(data)
        pos = rng.randrange(HEADER.size) if len(cases) % 2 else rng.randrange(len(data))
        flipped[pos] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    cases += [data + b"\0" * 64, with_crc(data + b"\0" * 64)]
    path = tmp_path / "fuzzed.onebit"
    for case in cases:
        path.write_bytes(case)
        with pytest.raises(ExportError) as err:
            deploy.load(path)(x)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_wrong_version_foreign_and_format_1_files(reactnet_file, tmp_path):
    data = bytearray(reactnet_file.read_bytes())
    data[8:12] = struct.pack("<I", 3)
    (tmp_path / "v3.onebit").write_bytes(with_crc(data))
    with pytest.raises(ExportError, match="format version 3, this onebit reads 2; export"):
        deploy.load(tmp_path / "v3.onebit")
    # format 1 (safetensors with a onebit header, as onebit wrote before graph files)
    write_format_1(tmp_path / "old.onebit")
    with pytest.raises(ExportError) as err:
        deploy.load(tmp_path / "old.onebit")
    assert str(err.value) == (
        f"{tmp_path / 'old.onebit'}: a format-1 .onebit file (safetensors, from an older onebit);"
        " this onebit runs graph files (format 2): export the model again with "
        "`onebit export RUN FILE`"
    )
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    (tmp_path / "text.onebit").write_text("hello")
    (tmp_path / "empty.onebit").write_bytes(b"")
    for name in ("plain.safetensors", "text.onebit", "empty.onebit"):
        with pytest.raises(ExportError, match=r"not a \.onebit file \(it does not start as one"):
            deploy.load(tmp_path / name)
    with pytest.raises(ExportError, match=r"missing\.onebit: cannot read it"):
        deploy.load(tmp_path / "missing.onebit")


def test_consistent_checksum_but_invalid_content_is_refused(reactnet_file, tmp_path):
    """A file written by another tool with a valid checksum is still checked in full: by
    read_graph (the meta) and by the runtime (the packed bits, every node)."""
    data = reactnet_file.read_bytes()
    nodes, tensors, record, meta = read_graph(data, "m")
    meta = {k: v for k, v in meta.items() if k not in ("nodes", "tensors")}
    first = next(n for n in nodes if n.op == "bconv2d")  # 16 input channels of 64 bits
    bits = np.array(tensors[first.tensors["weight_bits"]])
    bits[0, 0, 0, 0] |= np.uint64(1 << 40)
    bad = graph_bytes(nodes, {**tensors, first.tensors["weight_bits"]: bits}, record, meta)
    cases = [(bad, "bits set past its 16 input channels")]
    fields = HEADER.unpack_from(data)
    node_offset, meta_offset, meta_size = fields[9], fields[10], fields[11]
    k = nodes.index(first)
    itself = bytearray(data)  # the node reads its own output: a cycle
    itself[node_offset + k * NODE_SIZE + 8 : node_offset + k * NODE_SIZE + 12] = struct.pack(
        "<i", k + 1
    )
    cases.append((with_crc(itself), "reads a value not computed before it"))
    renamed = json.loads(data[meta_offset : meta_offset + meta_size])
    renamed["tensors"] = renamed["tensors"][1:]
    short = json.dumps(renamed, separators=(",", ":")).encode()
    short += b" " * (meta_size - len(short))  # the same length: only the names are wrong
    cases.append((with_crc(data[:meta_offset] + short + data[meta_offset + meta_size :]), None))
    path = tmp_path / "bad.onebit"
    for i, (case, message) in enumerate(cases):
        path.write_bytes(case)
        with pytest.raises(ExportError) as err:
            deploy.load(path)
        text = str(err.value)
        assert text.startswith(str(path)) and "\n" not in text, i
        assert message is None or message in text, text
    assert "do not match the tables" in text


def test_profile_deployed_bytes_matches_the_file(tmp_path):
    """Without folding (no BatchNorm), the file's tensors hold exactly the bytes
    onebit.profile.deployed_bytes counts for the model's modules."""
    model = onebit.binarize(
        nn.Sequential(
            nn.Conv2d(3, 70, 3),
            nn.Hardtanh(),
            nn.Conv2d(70, 20, 3),
            nn.Flatten(),
            nn.Linear(20 * 4 * 4, 10),
            nn.Linear(10, 5),
        ),
        method="recu",
        keep_last=False,
    )
    meta = deploy.export(
        model, tmp_path / "m.onebit", input_spec=InputSpec(3, 8, (0,) * 3, (1,) * 3)
    )
    assert len(meta["packed"]) == 3
    _, tensors, _, _ = read_graph((tmp_path / "m.onebit").read_bytes(), "m")
    stored = sum(t.nbytes for t in tensors.values())
    assert stored == sum(deployed_bytes(m) for m in model.modules())


# ----------------------------------------------------------------------------- CLI


def test_cli_export_state_dict_then_load(tmp_path, capsys, one_thread):
    model = trained_like("vgg_small", {"method": "recu"}, dyadic=False)
    save_file(model.state_dict(), tmp_path / "state.safetensors")
    argv = [
        "export",
        str(tmp_path / "state.safetensors"),
        str(tmp_path / "m.onebit"),
        "--model",
        "vgg_small",
        "--method",
        "recu",
        "--in-chans",
        "1",
    ]
    assert main(argv) == 0
    assert "5 packed binary layers" in capsys.readouterr().out
    deployed = deploy.load(tmp_path / "m.onebit")
    assert deployed.meta["model"]["options"]["method"] == "recu"
    x = fashion_mnist(4)
    with torch.no_grad():
        expected = model(x)
    assert_logits_close(deployed(x), expected, rtol=1e-4)
    assert main([*argv[:5], "--method", "recu"]) == 2  # in_chans 3: the state dict does not fit
    err = capsys.readouterr().err
    assert "does not match model 'vgg_small'" in err and err.count("\n") == 1
    assert main([*argv[:2], str(tmp_path / "h.onebit"), *argv[3:], "--fp16"]) == 2
    err = capsys.readouterr().err
    assert "fp32 only" in err and err.count("\n") == 1
    assert not (tmp_path / "h.onebit").exists()


def test_cli_export_of_a_training_run_equals_the_trained_model(tmp_path, capsys, one_thread):
    from onebit.config import load_config
    from onebit.train import RunDir, Trainer, load_model

    recipe = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"
    tiny = ["data.subset=64", "data.batch_size=32", "data.eval_subset=32", "runtime.device=cpu"]
    run = tmp_path / "run"
    Trainer(load_config(recipe, [*tiny, "schedule.epochs=1"]), RunDir(run)).fit()
    # the stored statistics: recalibration (the default) is tested in test_bn.py
    assert main(["export", str(run), str(tmp_path / "m.onebit"), "--no-recalibrate"]) == 0
    assert "18 packed binary layers" in capsys.readouterr().out
    trained, _ = load_model(run)
    deployed = deploy.load(tmp_path / "m.onebit")
    x = fashion_mnist(16)
    with torch.no_grad():
        expected = trained(x)
    assert_logits_close(deployed(x), expected, rtol=1e-4)
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "n.onebit")]) == 2
    assert not (tmp_path / "n.onebit").exists()
    capsys.readouterr()
    # export writes over a .onebit file only: never over its own checkpoint, nor into a folder
    best = (run / "best.safetensors").read_bytes()
    assert main(["export", str(run), str(run / "best.safetensors"), "--no-recalibrate"]) == 2
    err = capsys.readouterr().err
    assert "best.safetensors exists and is not a .onebit file" in err and err.count("\n") == 1
    assert (run / "best.safetensors").read_bytes() == best
    assert main(["export", str(run), str(run), "--no-recalibrate"]) == 2
    assert "is a directory: give a file path" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "m.onebit"), "--no-recalibrate"]) == 0
    # an exported file is no source to export from; one damaged at its start still says .onebit
    assert main(["export", str(tmp_path / "m.onebit"), str(tmp_path / "again.onebit")]) == 2
    assert "m.onebit is an exported .onebit file, not a training checkpoint" in (
        capsys.readouterr().err
    )
    damaged = tmp_path / "damaged.onebit"
    damaged.write_bytes(b"\0" * 8 + (tmp_path / "m.onebit").read_bytes()[8:])
    assert main(["eval", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "damaged.onebit: not a .onebit file (it does not start as one" in err
    assert "safetensors" not in err


def test_cli_bench_prints_both_tables(capsys, one_thread):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["bench", "--models", "resnet20", "--batch", "1", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    assert "512x7x7" in out and "resnet20" in out and "speedup" in out


# ------------------------------------------------------------------ input spec, predict, eval


@pytest.mark.parametrize(
    ("hw", "transform"),
    [
        ((300, 250), "resize_crop"),
        ((500, 375), "resize_crop"),
        ((32, 32), "resize_crop"),
        ((20, 27), "none"),
        ((1000, 37), "none"),
        ((7, 9), "resize_crop"),
    ],
)
def test_preprocess_resizes_as_pytorch_antialiased_bilinear_without_pytorch(hw, transform):
    """InputSpec's resize is numpy: PyTorch's F.interpolate(bilinear, antialias=True) to the
    shorter side round(size / 0.875) (resize_crop) or size (none), centre crop; shrinking by
    up to 27x and growing; equal to float rounding (the weights in float32, as PyTorch's)."""
    size = 32
    x = np.random.default_rng(hw[0]).random((2, 3, *hw)).astype(np.float32)
    got = InputSpec(3, size, (0.0,) * 3, (1.0,) * 3, transform).preprocess(x)
    short = round(size / 0.875) if transform == "resize_crop" else size
    scale = short / min(hw)
    new = (max(size, round(hw[0] * scale)), max(size, round(hw[1] * scale)))
    t = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=new, mode="bilinear", align_corners=False, antialias=True
    )
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    want = t[..., top : top + size, left : left + size].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def fmnist_export(tmp_path_factory):
    """A 1-bit ResNet-20 trained briefly on Fashion-MNIST, exported from its run directory."""
    from onebit.config import load_config
    from onebit.train import RunDir, Trainer

    tmp = tmp_path_factory.mktemp("fmnist_export")
    recipe = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"
    overrides = [
        "data.subset=768",
        "data.batch_size=64",
        "data.eval_subset=500",
        "schedule.epochs=2",
        "runtime.device=cpu",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(recipe, overrides), RunDir(tmp / "run")).fit()
        assert main(["export", str(tmp / "run"), str(tmp / "m.onebit")]) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp / "run", tmp / "m.onebit"


def test_predict_takes_raw_fashion_mnist_images(fmnist_export):
    """uint8 28x28 test images straight from the dataset files: predict pads and normalises
    them as training did (zero pad to 32, mean 0.2860, std 0.3530); the file names the
    classes."""
    from onebit.data import load_fashion_mnist

    _, file = fmnist_export
    deployed = deploy.load(file)
    assert deployed.input_spec.dataset == "fashion_mnist" and deployed.input_spec.raw_size == 28
    assert deployed.class_names[9] == "Ankle boot"
    images, labels = load_fashion_mnist(None, "test")
    images, labels = images[:200], labels[:200]  # (200, 1, 28, 28) uint8
    predicted = deployed.predict(images, batch_size=64)
    assert isinstance(predicted, np.ndarray) and predicted.dtype == np.int64
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    assert np.array_equal(predicted, deployed((padded - 0.2860) / 0.3530).argmax(1).numpy())
    assert (predicted == labels.numpy()).mean() > 0.3  # trained: far above chance (10%)
    # one image in any of the layouts: (H, W) uint8, (H, W) float in [0, 1], numpy
    one = images[0, 0]
    assert deployed.predict(one).tolist() == predicted[:1].tolist()
    assert deployed.predict(one.float() / 255).tolist() == predicted[:1].tolist()
    assert deployed.predict(one.numpy()).tolist() == predicted[:1].tolist()


def test_wrong_inputs_are_clear_value_errors(fmnist_export):
    deployed = deploy.load(fmnist_export[1])
    expected = r"takes float batches \(N, 1, 32, 32\), a float batch .* normalised as"
    with pytest.raises(ValueError, match=expected + r".*got shape \(2, 3, 32, 32\)"):
        deployed(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=expected + r".*got float32 \(1, 32, 32\)"):
        deployed(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=expected + r".*got int32 \(2, 1, 32, 32\)"):
        deployed(torch.zeros(2, 1, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="an empty batch"):
        deployed(np.zeros((0, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="a meta tensor"):
        deployed(torch.zeros(2, 1, 32, 32, device="meta"))
    # bfloat16 / float16 hold exact float32 values: taken as they are
    half = torch.randn(2, 1, 32, 32).to(torch.bfloat16)
    assert torch.equal(deployed(half), deployed(half.float()))
    for bad in ("2", 2.5, 0):
        with pytest.raises(ExportError, match=r"threads .*: a whole number from 1"):
            deployed.set_threads(bad)
    with pytest.raises(ValueError, match=expected + r".*predict\(images\) takes raw images"):
        deployed(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=expected + r".*got shape \(1, 1, 2, 2\)"):
        deployed(np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="do not have the model's 1 channel"):
        deployed.predict(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger than the model's 32x32"):
        deployed.predict(torch.zeros(40, 40, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        deployed.predict(torch.zeros(28, 28, dtype=torch.int32))
    # what was silently misread before: 0-255 floats, a colour image as 28 narrow ones
    raw = np.zeros((2, 28, 28), np.uint8)
    raw[:, 10:18, 10:18] = 200
    with pytest.raises(
        ValueError, match=r"float images must lie in \[0, 1\] \(these span 0 to 200"
    ):
        deployed.predict(raw.astype(np.float32))
    assert np.array_equal(deployed.predict(raw.astype(np.float32) / 255), deployed.predict(raw))
    with pytest.raises(ValueError, match="look like one colour image"):
        deployed.predict(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        deployed.predict(np.full((28, 28), np.nan, np.float32))
    with pytest.raises(ValueError, match="0x0 pixels"):
        deployed.predict(np.zeros((1, 0, 0), np.uint8))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"batch_size .* is not a positive whole number"):
            deployed.predict(raw, batch_size=bad)


def test_export_checks_the_input_spec_load_will_check(tmp_path):
    """An input spec that load would refuse is refused at export, and no file is written."""
    from onebit.input_spec import InputSpec

    model = onebit.create_model("resnet20", method="recu", in_chans=1, num_classes=10)
    for spec, message in (
        (InputSpec(channels=1, size=28, mean=(0.5,), std=(0.0,)), "std must be positive"),
        (InputSpec(channels=1, size=28, mean=(0.5,) * 3, std=(1.0,) * 3), "mean must be 1"),
        (InputSpec(channels=1, size=-1, mean=(0.5,), std=(1.0,)), "size must be a positive"),
    ):
        with pytest.raises(ExportError, match=f"export: input_spec is malformed \\({message}"):
            deploy.export(model, tmp_path / "m.onebit", input_spec=spec)
        assert not (tmp_path / "m.onebit").exists()


def test_eval_of_a_deployed_file_equals_the_trained_model(fmnist_export, capsys):
    """`onebit eval FILE.onebit` runs the runtime on the dataset the file names and shows the
    trained model's figure stored at export: equal."""
    _, file = fmnist_export
    assert main(["eval", str(file), "--set", "data.eval_subset=500"]) == 0
    out = capsys.readouterr().out
    deployed = float(out.split("val_top1 ")[1].split("%")[0])
    trained = float(out.split("at export: ")[1].split("%")[0])
    assert deployed == trained and "500 images" in out and "kernel " in out
    assert main(["eval", str(file), "--set", "optim.lr=0.1"]) == 2
    assert "only data.* keys" in capsys.readouterr().err


def rewritten(path: Path, **changes) -> bytes:
    """The file at ``path`` written again with meta entries changed (a valid checksum)."""
    nodes, tensors, record, meta = read_graph(path.read_bytes(), str(path))
    meta = {k: v for k, v in meta.items() if k not in ("nodes", "tensors")}
    return graph_bytes(nodes, dict(tensors), record, {**meta, **changes})


def test_input_spec_in_the_file_is_validated(tmp_path):
    model = onebit.create_model("resnet20", method="recu", in_chans=1)
    meta = deploy.export(model, tmp_path / "ok.onebit")
    assert meta["input"]["dataset"] == "fashion_mnist"  # the registry default for 1 channel
    good = meta["input"]
    for bad in (
        {**good, "channels": "1"},
        {**good, "mean": [0.1, 0.2]},
        {**good, "std": [0.0]},
        {**good, "transform": "warp"},
        {**good, "class_names": [1, 2]},
        {**good, "extra": 1},
        [1, 2],
    ):
        (tmp_path / "bad.onebit").write_bytes(rewritten(tmp_path / "ok.onebit", input=bad))
        with pytest.raises(ExportError, match="input spec is malformed"):
            deploy.load(tmp_path / "bad.onebit")
    (tmp_path / "none.onebit").write_bytes(rewritten(tmp_path / "ok.onebit", input=None))
    deployed = deploy.load(tmp_path / "none.onebit")  # no spec: batches only
    assert deployed.input_spec is None and deployed.class_names is None
    assert deployed(np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)
    with pytest.raises(ValueError, match="has no input spec"):
        deployed.predict(np.zeros((28, 28), np.uint8))


def test_input_spec_that_contradicts_the_input_record_is_refused(tmp_path):
    deploy.export(onebit.create_model("resnet20", in_chans=1), tmp_path / "ok.onebit")
    good = read_graph((tmp_path / "ok.onebit").read_bytes(), "ok")[3]["input"]
    for bad in (
        {**good, "size": 28},
        {**good, "mean": [0.5]},
        {**good, "transform": "none", "raw_size": None},
        {**good, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
    ):
        (tmp_path / "bad.onebit").write_bytes(rewritten(tmp_path / "ok.onebit", input=bad))
        with pytest.raises(ExportError, match="input"):
            deploy.load(tmp_path / "bad.onebit")
