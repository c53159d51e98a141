"""CIFAR-10 / CIFAR-100 from the official ``cifar-*-py`` pickle batches.

The batches are Python pickles, so they are read with a restricted unpickler that only builds
the numpy arrays, dicts, lists and bytes those files contain: a file that asks for anything
else is refused, never executed. Each file's md5 is checked against the published value
(``data.checksum: false`` skips that, e.g. for re-packed copies). Source: Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html (file layout and md5s as published there).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from onebit.errors import DataError

# name -> (folder, {split: [(file, md5)]}, label key, number of classes)
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        {
            "train": [
                ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ],
            "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
        },
        b"labels",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        {
            "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
            "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
        },
        b"fine_labels",
        100,
    ),
}
_MAX_FILE_BYTES = 200 * 2**20  # the largest official file (CIFAR-100 train) is ~155 MB
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # how Python 3 writes bytes at protocol 2 (re-packed copies); encodes a str, nothing more
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds only numpy arrays (plus the dicts, lists and bytes pickle makes natively)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _how_to_get(name: str) -> str:
    folder = LAYOUTS[name][0]
    archive = folder.replace("-batches", "").replace("-py", "-python")
    return (
        f"download {archive}.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it "
        f"so that data.root/{folder}/ exists"
    )


def read_batch(path: Path, md5: str | None) -> dict:
    """One pickle batch as a dict with bytes keys; DataError if it is not a clean CIFAR file."""
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise DataError(f"{path} is {size} bytes, too large for a CIFAR batch")
    raw = path.read_bytes()
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(
            f"{path} is corrupt: md5 {hashlib.md5(raw).hexdigest()} != published {md5}; "
            "download it again (or set data.checksum: false for a re-packed copy)"
        )
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any failure to decode is a corrupt file, whatever its type
        raise DataError(f"{path} is not a CIFAR pickle batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR pickle batch (top level is not a dict)")
    return batch


def load_cifar(
    root: str | Path | None, name: str, split: str, checksum: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of ``cifar10``/``cifar100`` ``split``.

    ``root`` is the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or that
    folder itself); default data/<name>.
    """
    folder, files, label_key, num_classes = LAYOUTS[name]
    root = Path(root) if root else Path("data") / name
    directory = root if root.name == folder else root / folder
    images, labels = [], []
    for filename, md5 in files[split]:
        path = directory / filename
        if not path.is_file():
            raise DataError(f"{name} file {path} not found; {_how_to_get(name)}")
        batch = read_batch(path, md5 if checksum else None)
        data, batch_labels = batch.get(b"data"), batch.get(label_key)
        ok = (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32
            and len(data) > 0
            and isinstance(batch_labels, list)
            and len(batch_labels) == len(data)
        )
        if not ok:
            raise DataError(
                f"{path}: expected b'data' uint8 (N, 3072), N > 0, and a list {label_key!r} "
                "of N labels"
            )
        if not all(
            type(label) is int and 0 <= label < num_classes for label in batch_labels
        ):  # strings, floats (NaN), bools, 2**70: not a class index
            raise DataError(f"{path}: labels must be integers 0-{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    images_np, labels_np = np.concatenate(images), np.concatenate(labels)
    if labels_np.min() < 0 or labels_np.max() >= num_classes:
        raise DataError(f"{directory}: {split} labels outside 0-{num_classes - 1}")
    return torch.from_numpy(images_np), torch.from_numpy(labels_np)
