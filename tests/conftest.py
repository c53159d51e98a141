import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


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


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """A tiny ImageFolder tree: train/ and val/, two classes of two solid-colour images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        for name, colour in {"cat": (250, 10, 10), "dog": (10, 10, 250)}.items():
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 36), colour).save(root / split / name / f"{i}.png")
    return root


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
