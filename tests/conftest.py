import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run the test on one torch thread. Tiny batches gain nothing from a second thread, and
    on a busy machine OpenMP's waiting threads make small ops up to 30x slower (measured:
    one ResNet-34 batch-2 step 12.9 s CPU on 2 threads, 0.95 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def onebit_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m onebit ARGS`` in a fresh process in ``cwd`` (one thread); its output."""
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "onebit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_format_1(path: Path, imports: list[str] | None = None) -> Path:
    """A format-1 ``.onebit`` file as onebit wrote it before graph files: a safetensors
    container whose metadata holds the JSON header (which named the modules to import at load,
    ``imports``) and its SHA-256. Returns ``path``."""
    import hashlib
    import json

    from safetensors.torch import save_file

    header = {
        "format": "onebit-deploy",
        "version": 1,
        "model": {"name": "resnet20", "options": {"in_chans": 1}},
        "fp_dtype": "float32",
        "layers": [],
        "folded": [],
        "input": None,
    }
    if imports is not None:
        header["imports"] = imports
    text = json.dumps(header, sort_keys=True)
    metadata = {"onebit": text, "onebit_sha256": hashlib.sha256(text.encode()).hexdigest()}
    save_file({"conv1.weight": torch.zeros(16, 1, 3, 3)}, str(path), metadata=metadata)
    return path


def write_cifar(root, name: str, per_file: int = 6, seed: int = 0):
    """Write a tiny CIFAR-10/100 folder in the official on-disk format (Python-2 style pickles:
    dicts with bytes keys, b'data' a uint8 (N, 3072) array, labels a list). Returns the folder."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, classes = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], 10
        files.append("test_batch")
    else:
        folder, files, classes = "cifar-100-python", ["train", "test"], 100
    directory = root / folder
    directory.mkdir(parents=True)
    for file in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, per_file).tolist()
        batch = {b"batch_label": file.encode(), b"data": data, b"filenames": [b"x.png"] * per_file}
        if name == "cifar10":
            batch[b"labels"] = labels
        else:
            batch[b"fine_labels"], batch[b"coarse_labels"] = labels, [c // 5 for c in labels]
        with open(directory / file, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return directory


@pytest.fixture(scope="session")
def cifar_roots(tmp_path_factory):
    """{"cifar10": root, "cifar100": root} with tiny generated CIFAR folders."""
    base = tmp_path_factory.mktemp("cifar")
    roots = {}
    for name in ("cifar10", "cifar100"):
        roots[name] = base / name
        write_cifar(roots[name], name)
    return roots


def write_image_folder(root, classes: int = 2, train_per_class: int = 2, val_per_class: int = 1):
    """Write a tiny ImageNet-layout folder (root/{train,val}/<class>/*.png) of random images of
    varied sizes. Returns root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(36, 60)), int(rng.integers(36, 60)), 3)
                array = rng.integers(0, 256, size, dtype=np.uint8)
                Image.fromarray(array, "RGB").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory):
    """A tiny ImageNet-layout folder: 2 classes, 2 training and 1 validation image each."""
    return write_image_folder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    """``teacher_file(model_spec, num_classes, in_chans)``: a .safetensors state dict of an
    untrained ``create_model(**model_spec)`` (what ``distill.teacher.checkpoint`` accepts),
    written once per spec."""
    from safetensors.torch import save_file

    from onebit.models import create_model

    base, made = tmp_path_factory.mktemp("teachers"), {}

    def make(spec: dict, num_classes: int, in_chans: int):
        key = (tuple(sorted(spec.items())), num_classes, in_chans)
        if key not in made:
            model = create_model(**spec, num_classes=num_classes, in_chans=in_chans)
            made[key] = base / f"teacher{len(made)}.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, made[key])
        return made[key]

    return make


ARM_TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64")


def missing_toolchain(why: str) -> None:
    """Skip a test that needs a C toolchain this machine lacks; in CI (``CI`` set, as .ci/run
    sets it) fail instead: .ci/run installs the toolchain, so a missing one is a broken CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI runs this test: {why}")
    pytest.skip(why)


def require_arm_tools() -> None:
    """The aarch64 cross compiler and qemu-aarch64, or :func:`missing_toolchain`."""
    missing = [tool for tool in ARM_TOOLS if shutil.which(tool) is None]
    if missing:
        names = " and ".join(missing)
        missing_toolchain(f"needs {names} (apt-get install gcc-aarch64-linux-gnu qemu-user)")


def power_of_two(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.exp2(torch.round(torch.log2(t.abs().clamp_min(2**-20))))


@torch.no_grad()
def make_dyadic(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its BatchNorms, weight scales and alphas rounded to values whose products
    and sums are exact in fp32 (var + eps a power of 4, gamma and alpha powers of two, means
    and betas multiples of 1/16): a BatchNorm folded into ``dot * out_scale + out_bias`` then
    gives the very number PyTorch's conv -> BatchNorm gives, so near-zero signs cannot flip."""
    from onebit.nn import BATCHNORMS
    from onebit.nn.binary import BinaryLayer

    for m in model.modules():
        if isinstance(m, BATCHNORMS):
            four = torch.exp2(2 * torch.round(torch.log2(m.running_var.clamp_min(1e-3)) / 2))
            m.running_var.copy_(four - m.eps)
            assert torch.equal(m.running_var + m.eps, four)
            m.weight.copy_(power_of_two(m.weight))
            m.bias.copy_(torch.round(m.bias * 16) / 16)
            m.running_mean.copy_(torch.round(m.running_mean * 16) / 16)
        if isinstance(m, BinaryLayer) and m.weight_spec is not None:
            if m.weight_spec.name in (
                "xnor",
                "xnor_exact",
                "magnitude_aware",
            ):  # alpha = mean|W_c|, 2^k
                scale = torch.exp2(torch.randint(-4, 0, (m.weight.shape[0],)).float())
                m.weight.copy_(m.weight.sign() * scale.view(-1, *[1] * (m.weight.dim() - 1)))
            if m.alpha is not None:
                m.alpha.copy_(power_of_two(m.alpha))
    return model


def stop_in_epoch_two(trainer) -> None:
    """Fit ``trainer``, stopped (as by a kill) when its second epoch would start: the first
    epoch is trained, recorded and checkpointed."""
    train_epoch = trainer.train_epoch

    def first_only(epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(epoch, **kwargs)

    trainer.train_epoch = first_only
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
