"""Fashion-MNIST from its IDX files (gzipped or raw): 28x28 grayscale, 10 classes.

Source: Xiao et al. 2017, https://github.com/zalandoresearch/fashion-mnist (file format: the
MNIST IDX format, big-endian header: magic, dimension sizes, then uint8 data).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from onebit.errors import DataError

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path("data/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz files "
    "of github.com/zalandoresearch/fashion-mnist in data.root"
)


# The largest IDX file onebit reads: Fashion-MNIST's training images are 47 MB.
MAX_IDX_BYTES = 64 * 2**20


def read_idx(path: Path) -> np.ndarray:
    """The array in an IDX file (``.gz`` or raw): magic 0x0000 08 <ndim>, sizes, uint8 data.

    The declared size is checked before the data is read, and a gzipped file is decompressed
    as a stream up to that size: a corrupt or hostile file (a flipped byte, sizes whose
    product overflows, a "gzip bomb") is a DataError, never a crash or a memory blow-up.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
                raise DataError(f"{path} is not a uint8 IDX file (bad magic number); {_HOW_TO_GET}")
            ndim = head[3]
            dims = f.read(4 * ndim)
            shape = struct.unpack(f">{ndim}I", dims) if len(dims) == 4 * ndim else None
            size = math.prod(shape) if shape is not None else -1
            if not 0 <= size <= MAX_IDX_BYTES:
                raise DataError(
                    f"{path} declares {'no valid sizes' if size < 0 else f'{size} bytes'} of "
                    f"data (at most {MAX_IDX_BYTES} expected); {_HOW_TO_GET}"
                )
            data = f.read(size)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a readable IDX file ({err}); {_HOW_TO_GET}") from None
    if len(data) != size or extra:
        raise DataError(
            f"{path} is truncated or corrupt (size does not match its header); {_HOW_TO_GET}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | Path | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of the ``"train"`` or ``"test"`` split.

    Looks in ``root`` if given, else in data/fashion-mnist and /usr/share/datasets/fashion-mnist.
    """
    images_stem, labels_stem, count = _FILES[split]
    roots = [Path(root)] if root else [DEFAULT_ROOT, SYSTEM_ROOT]
    for directory in roots:
        images_path, labels_path = _find(directory, images_stem), _find(directory, labels_stem)
        if images_path and labels_path:
            break
    else:
        where = " and ".join(str(r) for r in roots)
        raise DataError(f"Fashion-MNIST {split} files not found in {where}; {_HOW_TO_GET}")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape != (count, 28, 28) or labels.shape != (count,) or labels.max() > 9:
        raise DataError(
            f"{images_path} / {labels_path}: expected {count} 28x28 images and labels 0-9, got "
            f"images {images.shape}, labels {labels.shape}; {_HOW_TO_GET}"
        )
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
