"""Export to .onebit and the deployed engine: equivalence with the trained model, file checks,
kernel selection and the CLI."""

import gzip
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import onebit
from onebit import deploy
from onebit.cli import main
from onebit.deploy import engine
from onebit.deploy import format as fmt
from onebit.errors import ConfigError, ExportError
from onebit.nn import BATCHNORMS, LearnableBias
from onebit.nn.binary import BinaryLayer
from onebit.profile import deployed_bytes
from onebit.quant import METHODS

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")

# Every model family, at its default method. The ImageNet families (resnet18, birealnet18,
# reactnet_a, real2binary18, ...) join this list when they are in the registry.
FAMILIES = [
    ("resnet20", {}),
    ("resnet18_cifar", {}),
    ("vgg_small", {}),
    ("firnet20", {}),
    ("firnet18_cifar", {}),
]
# ImageNet-scale families, fed 32x32 Fashion-MNIST (stem and pooling still apply); their deep
# full-precision residual streams (learnable shifts, RPReLU) are not dyadic, so they are
# checked to fp32 rounding rather than bit for bit
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


def power_of_two(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.exp2(torch.round(torch.log2(t.abs().clamp_min(2**-20))))


@torch.no_grad()
def trained_like(name: str, options: dict, dyadic: bool = True) -> nn.Module:
    """A registry model (in_chans 1) with non-trivial learnable shifts and BatchNorm running
    statistics from training-mode passes on Fashion-MNIST, in eval mode.

    ``dyadic=True`` then rounds every BatchNorm's affine map and every weight scale to values
    whose products and sums are exact in fp32 (var + eps a power of 4, gamma and alpha powers
    of two, means and betas multiples of 1/16): the folded ``dot * scale + bias`` and
    PyTorch's BatchNorm of the conv output are then the same number, not just close, so the
    engine must reproduce the model bit for bit, sign flips at exact zeros included.
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
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                four = torch.exp2(2 * torch.round(torch.log2(m.running_var.clamp_min(1e-3)) / 2))
                m.running_var.copy_(four - m.eps)
                assert torch.equal(m.running_var + m.eps, four)
                m.weight.copy_(power_of_two(m.weight))
                m.bias.copy_(torch.round(m.bias * 16) / 16)
                m.running_mean.copy_(torch.round(m.running_mean * 16) / 16)
            if isinstance(m, BinaryLayer) and m.weight_spec is not None:
                if m.weight_spec.name in ("xnor", "magnitude_aware"):  # alpha = mean|W_c|, 2^k
                    scale = torch.exp2(torch.randint(-4, 0, (m.weight.shape[0],)).float())
                    m.weight.copy_(m.weight.sign() * scale.view(-1, *[1] * (m.weight.dim() - 1)))
                if m.alpha is not None:
                    m.alpha.copy_(power_of_two(m.alpha))
    return model


@pytest.mark.parametrize("name,options", FAMILIES + METHOD_CASES)
def test_engine_equals_model_bit_for_bit(name, options, tmp_path):
    model = trained_like(name, options)
    header = deploy.export(model, tmp_path / "m.onebit")
    runtime = deploy.load(tmp_path / "m.onebit")
    x = fashion_mnist(16)
    with torch.no_grad():
        expected = model(x)
    out = runtime(x)
    assert torch.equal(out, expected)
    assert torch.equal(out.argmax(1), expected.argmax(1))
    binary = [m for m in model.modules() if isinstance(m, BinaryLayer) and m.bits == "1w1a"]
    packed = [m for m in runtime.modules() if isinstance(m, deploy.PackedConv2d)]
    assert len(packed) == len(binary) > 0
    assert header["folded"]  # BatchNorm folding really happened
    assert not any(
        isinstance(m, BATCHNORMS) and n in header["folded"]
        for n, m in runtime.network.named_modules()
    )


@pytest.mark.parametrize("name,options", IMAGENET_FAMILIES)
def test_engine_runs_imagenet_families_to_float_rounding(name, options, tmp_path):
    model = trained_like(name, options)
    deploy.export(model, tmp_path / "m.onebit")
    runtime = deploy.load(tmp_path / "m.onebit")
    x = fashion_mnist(16)
    with torch.no_grad():
        expected = model(x)
    out = runtime(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(out.argmax(1), expected.argmax(1))
    binary = [m for m in model.modules() if isinstance(m, BinaryLayer) and m.bits == "1w1a"]
    packed = [m for m in runtime.modules() if isinstance(m, deploy.PackedConv2d)]
    assert len(packed) == len(binary) > 0


@pytest.mark.parametrize("name", ["resnet18_cifar", "firnet20"])
def test_folded_layers_match_with_raw_batchnorm_statistics(name, tmp_path):
    """With unrounded statistics, each packed layer (BatchNorm folded) fed the model's own
    input reproduces the model's conv -> BatchNorm output to fp32 rounding; end to end the
    logits agree to float tolerance and the argmax is identical."""
    model = trained_like(name, {"method": "xnor"}, dyadic=False)
    header = deploy.export(model, tmp_path / "m.onebit")
    runtime = deploy.load(tmp_path / "m.onebit")
    inputs, outputs = {}, {}
    for desc in runtime.layers:
        layer, after = model.get_submodule(desc.name), model.get_submodule(desc.bn or desc.name)
        layer.register_forward_pre_hook(lambda m, a, n=desc.name: inputs.update({n: a[0]}))
        after.register_forward_hook(lambda m, a, o, n=desc.name: outputs.update({n: o}))
    x = fashion_mnist(8)
    with torch.no_grad():
        expected = model(x)
    assert len(header["folded"]) == len(runtime.layers)
    with torch.no_grad():
        for desc in runtime.layers:
            got = runtime.network.get_submodule(desc.name)(inputs[desc.name])
            want = outputs[desc.name]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    out = runtime(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(out.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("bits", ["1w32a", "32w1a"])
def test_partly_binary_layers_run_in_float(bits, tmp_path):
    model = trained_like("resnet20", {"bits": bits}, dyadic=False)
    header = deploy.export(model, tmp_path / "m.onebit")
    runtime = deploy.load(tmp_path / "m.onebit")
    assert [layer["mode"] for layer in header["layers"]] == (
        ["float"] * 18 if bits == "1w32a" else []
    )
    x = fashion_mnist(4)
    with torch.no_grad():
        assert torch.equal(runtime(x), model(x))


def test_fp16_file_rounds_only_the_full_precision_parts(tmp_path):
    model = trained_like("resnet18_cifar", {})
    deploy.export(model, tmp_path / "32.onebit")
    header = deploy.export(model, tmp_path / "16.onebit", fp16=True)
    assert header["fp_dtype"] == "float16"
    _, layers, tensors = fmt.read(tmp_path / "16.onebit")
    layer_tensors = {name for d in layers for name in d.tensor_shapes()}
    fp_tensors = {k: v for k, v in tensors.items() if k not in layer_tensors}
    assert all(v.dtype in (torch.float16, torch.int64) for v in fp_tensors.values())
    assert all(tensors[k].dtype in (torch.float32, torch.int64) for k in layer_tensors)
    half = sum(v.numel() * 2 for v in fp_tensors.values() if v.dtype == torch.float16)
    size32, size16 = ((tmp_path / f).stat().st_size for f in ("32.onebit", "16.onebit"))
    assert size32 - size16 == pytest.approx(half, abs=4096)  # header sizes differ a little
    # the engine is then exactly the model with those parameters rounded to fp16
    state = model.state_dict()
    with torch.no_grad():
        for key, value in fp_tensors.items():
            if value.dtype == torch.float16:
                state[key].copy_(state[key].half().float())
    x = fashion_mnist(8)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(deploy.load(tmp_path / "16.onebit")(x), expected)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 70, 3, stride=2, padding=1),
            nn.BatchNorm2d(70),
            nn.Hardtanh(),
            nn.Conv2d(70, 32, 3, padding=1, groups=2),
            nn.BatchNorm2d(32),
            nn.Hardtanh(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 16 * 16, 100), nn.BatchNorm1d(100), nn.Linear(100, 10)
        )

    def forward(self, x):
        return self.head(self.features(x))


def binarized_small_net() -> nn.Module:
    torch.manual_seed(0)
    model = onebit.binarize(SmallNet(), method="reactnet")
    model.train()
    with torch.no_grad():
        model(fashion_mnist(32))
    return model.eval()


def test_binarized_user_model_needs_an_instance_to_load(tmp_path):
    model = binarized_small_net()
    header = deploy.export(model, tmp_path / "m.onebit")
    modes = {layer["name"]: (layer["mode"], layer["bn"]) for layer in header["layers"]}
    assert modes == {
        "features.3": ("packed", "features.4"),
        "features.6": ("float", None),  # groups=2: PyTorch runs it with the unpacked weights
        "head.1": ("packed", "head.2"),  # a binary linear, BatchNorm1d folded
    }
    with pytest.raises(ExportError, match="model=an instance"):
        deploy.load(tmp_path / "m.onebit")
    runtime = deploy.load(tmp_path / "m.onebit", model=binarized_small_net())
    x = fashion_mnist(8)
    with torch.no_grad():
        expected = model(x)
    out = runtime(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(ExportError, match="does not match this model"):
        deploy.load(tmp_path / "m.onebit", model=onebit.create_model("resnet20", in_chans=1))


def test_untraceable_model_exports_without_folding(tmp_path):
    class Branchy(SmallNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 1.0
            return super().forward(x)

    torch.manual_seed(0)
    model = onebit.binarize(Branchy(), method="xnor").eval()
    with pytest.warns(UserWarning, match="not folded"):
        header = deploy.export(model, tmp_path / "m.onebit")
    assert header["folded"] == []
    torch.manual_seed(0)
    runtime = deploy.load(tmp_path / "m.onebit", model=onebit.binarize(Branchy(), method="xnor"))
    x = fashion_mnist(4)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-5)


def test_each_kernel_and_the_env_variable(tmp_path, monkeypatch):
    model = trained_like("firnet20", {})
    deploy.export(model, tmp_path / "m.onebit")
    x = fashion_mnist(8)
    outputs = {
        k: deploy.load(tmp_path / "m.onebit", kernel=k)(x) for k in deploy.available_kernels()
    }
    assert all(torch.equal(o, outputs["reference"]) for o in outputs.values())
    monkeypatch.setenv(deploy.KERNEL_ENV, "reference")
    assert deploy.load(tmp_path / "m.onebit").kernel == "reference"
    monkeypatch.setenv(deploy.KERNEL_ENV, "fastest")
    with pytest.raises(ConfigError, match=r"'fastest'.*not one of"):
        deploy.load(tmp_path / "m.onebit")


def test_a_kernel_the_cpu_lacks_is_refused(monkeypatch):
    class NoAvx512:
        @staticmethod
        def variants():
            return [("portable", True), ("avx2", True), ("avx512", False)]

    monkeypatch.setattr(engine, "_kernels", NoAvx512)
    assert deploy.available_kernels() == ["avx2", "portable", "reference"]
    assert deploy.select_kernel("auto") == "avx2"
    with pytest.raises(ConfigError, match="'avx512' cannot run here"):
        deploy.select_kernel("avx512")


def test_without_the_extension_the_reference_path_runs_with_a_warning(tmp_path, monkeypatch):
    model = trained_like("resnet20", {})
    deploy.export(model, tmp_path / "m.onebit")
    x = fashion_mnist(4)
    compiled = deploy.load(tmp_path / "m.onebit")(x)
    monkeypatch.setattr(engine, "_kernels", None)
    monkeypatch.setattr(
        engine, "_KERNELS_MISSING", "the C extension is not built (test)", raising=False
    )
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        runtime = deploy.load(tmp_path / "m.onebit")
    assert runtime.kernel == "reference"
    assert torch.equal(runtime(x), compiled)
    with pytest.raises(ConfigError, match="not built"):
        deploy.load(tmp_path / "m.onebit", kernel="avx2")


# ----------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def reactnet_file(tmp_path_factory):
    model = trained_like("resnet20", {"method": "reactnet"}, dyadic=False)
    path = tmp_path_factory.mktemp("file") / "m.onebit"
    deploy.export(model, path)
    return path


def test_fuzzed_files_raise_one_line_export_errors(reactnet_file, tmp_path):
    """Truncations and bit flips anywhere: an ExportError naming the file, or (a flip the
    format tolerates) a model with the very same output. Never another exception."""
    data = reactnet_file.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    x = fashion_mnist(2)
    expected = deploy.load(reactnet_file)(x)
    rng = random.Random(0)
    cases = [data[: rng.randrange(len(data))] for _ in range(60)]
    for _ in range(120):
        flipped = bytearray(data)
        pos = rng.randrange(header_end) if len(cases) % 2 else rng.randrange(len(data))
        flipped[pos] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    path = tmp_path / "fuzzed.onebit"
    errors = 0
    for case in cases:
        path.write_bytes(case)
        try:
            out = deploy.load(path)(x)
        except ExportError as err:
            errors += 1
            assert str(path) in str(err) and "\n" not in str(err)
        else:
            assert torch.equal(out, expected)
    assert errors >= len(cases) - 5


def test_wrong_version_and_foreign_files(reactnet_file, tmp_path):
    header, _, tensors = fmt.read(reactnet_file)
    fmt.write(tmp_path / "v2.onebit", {**header, "version": 2}, tensors)
    with pytest.raises(ExportError, match="format version 2, this onebit reads version 1"):
        deploy.load(tmp_path / "v2.onebit")
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ExportError, match="without a onebit header"):
        deploy.load(tmp_path / "plain.safetensors")
    with pytest.raises(ExportError, match="no such file"):
        deploy.load(tmp_path / "missing.onebit")
    (tmp_path / "text.onebit").write_text("hello")
    with pytest.raises(ExportError, match="not a readable onebit file"):
        deploy.load(tmp_path / "text.onebit")


def test_consistent_checksum_but_invalid_content_is_refused(reactnet_file, tmp_path):
    """A file written by another tool with a valid checksum is still checked in full."""
    header, layers, tensors = fmt.read(reactnet_file)
    name = layers[0].name
    bad = dict(tensors)
    bad[f"{name}.weight_bits"] = tensors[f"{name}.weight_bits"] | (1 << 40)  # past 16 channels
    fmt.write(tmp_path / "tail.onebit", header, bad)
    with pytest.raises(ExportError, match="bits past its channels"):
        deploy.load(tmp_path / "tail.onebit")
    bad = {k: v for k, v in tensors.items() if k != f"{name}.out_scale"}
    fmt.write(tmp_path / "missing.onebit", header, bad)
    with pytest.raises(ExportError, match="out_scale is missing or has the wrong shape"):
        deploy.load(tmp_path / "missing.onebit")
    wrong = json.loads(json.dumps(header))
    wrong["layers"][0]["stride"] = [1, 1, 1]
    fmt.write(tmp_path / "stride.onebit", wrong, tensors)
    with pytest.raises(ExportError, match="stride is not a pair"):
        deploy.load(tmp_path / "stride.onebit")
    wrong = json.loads(json.dumps(header))
    wrong["layers"][0]["in_channels"] = 80
    fmt.write(tmp_path / "cin.onebit", wrong, tensors)
    with pytest.raises(ExportError, match="weight_bits is missing or has the wrong shape"):
        deploy.load(tmp_path / "cin.onebit")
    assert not list(tmp_path.glob(".*.tmp"))  # writes go through a temporary file


def test_profile_deployed_bytes_matches_the_file(tmp_path):
    """Without folding (nothing to fold here), the file's tensors take exactly the bytes
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
    deploy.export(model, tmp_path / "m.onebit")
    _, _, tensors = fmt.read(tmp_path / "m.onebit")
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored == sum(deployed_bytes(m) for m in model.modules())


# ----------------------------------------------------------------------------- CLI


def test_cli_export_state_dict_then_load(tmp_path, capsys):
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
        "--fp16",
    ]
    assert main(argv) == 0
    assert "5 packed binary layers" in capsys.readouterr().out
    runtime = deploy.load(tmp_path / "m.onebit")
    assert runtime.header["model"]["options"]["method"] == "recu"
    assert main([*argv[:5], "--method", "recu"]) == 2  # in_chans 3: the state dict does not fit
    err = capsys.readouterr().err
    assert "does not match model 'vgg_small'" in err and err.count("\n") == 1


def test_cli_export_of_a_training_run_equals_the_trained_model(tmp_path, capsys):
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
        expected, got = trained(x), deployed(x)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "n.onebit")]) == 2
    assert not (tmp_path / "n.onebit").exists()


def test_cli_bench_prints_both_tables(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["bench", "--models", "resnet20", "--batch", "1", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    assert "512x7x7" in out and "resnet20" in out and "speedup" in out


# ------------------------------------------------------------------ input spec, predict, eval


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
    them as training did (zero pad to 32, mean 0.2860, std 0.3530); the header names the
    classes."""
    from onebit.data import load_fashion_mnist

    _, file = fmnist_export
    runtime = deploy.load(file)
    assert runtime.input_spec.dataset == "fashion_mnist" and runtime.input_spec.raw_size == 28
    assert runtime.class_names[9] == "Ankle boot"
    images, labels = load_fashion_mnist(None, "test")
    images, labels = images[:200], labels[:200]  # (200, 1, 28, 28) uint8
    predicted = runtime.predict(images)
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    assert torch.equal(predicted, runtime((padded - 0.2860) / 0.3530).argmax(1))
    assert (predicted == labels).float().mean() > 0.3  # trained: far above chance (10%)
    # one image in any of the layouts: (H, W) uint8, (H, W) float in [0, 1], numpy
    one = images[0, 0]
    assert runtime.predict(one).tolist() == predicted[:1].tolist()
    assert runtime.predict(one.float() / 255).tolist() == predicted[:1].tolist()
    assert runtime.predict(one.numpy()).tolist() == predicted[:1].tolist()


def test_wrong_inputs_are_clear_value_errors(fmnist_export):
    runtime = deploy.load(fmnist_export[1])
    expected = r"takes a float batch \(N, 1, 32, 32\) normalised as"
    with pytest.raises(ValueError, match=expected + r".*got 3 channels"):
        runtime(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=expected + r".*got \(1, 32, 32\)"):
        runtime(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=expected):
        runtime(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot run a batch of shape \\(1, 1, 2, 2\\)"):
        runtime(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="do not have the model's 1 channel"):
        runtime.predict(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger than the model's 32x32"):
        runtime.predict(torch.zeros(40, 40, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        runtime.predict(torch.zeros(28, 28, dtype=torch.int32))


def test_eval_of_a_deployed_file_equals_the_trained_model(fmnist_export, capsys):
    """`onebit eval FILE.onebit` runs the packed engine on the dataset its header names and
    shows the trained model's figure stored at export: equal (fp32 export)."""
    _, file = fmnist_export
    assert main(["eval", str(file), "--set", "data.eval_subset=500"]) == 0
    out = capsys.readouterr().out
    deployed = float(out.split("val_top1 ")[1].split("%")[0])
    trained = float(out.split("at export: ")[1].split("%")[0])
    assert deployed == trained and "500 images" in out and "packed engine" in out
    assert main(["eval", str(file), "--set", "optim.lr=0.1"]) == 2
    assert "only data.* keys" in capsys.readouterr().err


def test_input_spec_in_the_header_is_validated(tmp_path):
    model = onebit.create_model("resnet20", method="recu", in_chans=1)
    header = deploy.export(model, tmp_path / "ok.onebit")
    assert header["input"]["dataset"] == "fashion_mnist"  # the registry default for 1 channel
    for bad in (
        {**header["input"], "channels": "1"},
        {**header["input"], "mean": [0.1, 0.2]},
        {**header["input"], "std": [0.0]},
        {**header["input"], "transform": "warp"},
        {**header["input"], "class_names": [1, 2]},
        {**header["input"], "extra": 1},
        [1, 2],
    ):
        h, _, tensors = fmt.read(tmp_path / "ok.onebit")
        fmt.write(tmp_path / "bad.onebit", {**h, "input": bad}, tensors)
        with pytest.raises(ExportError, match="input spec is malformed"):
            deploy.load(tmp_path / "bad.onebit")
