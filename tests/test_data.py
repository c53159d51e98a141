"""Dataset readers on real Fashion-MNIST and on CIFAR / image-folder files written here in the
exact on-disk formats; the device loader's crop, flip, order and normalisation."""

import gzip
import hashlib
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import write_cifar
from onebit.data import (
    DataConfig,
    DeviceLoader,
    Normalize,
    build_loaders,
    load_cifar,
    load_fashion_mnist,
)
from onebit.data import cifar as cifar_module
from onebit.data.fashion_mnist import read_idx
from onebit.data.gpu_loader import random_crop
from onebit.data.imagefolder import adjust_hue, color_jitter, random_resized_box
from onebit.errors import ConfigError, DataError

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ Fashion-MNIST (real files)


def test_fashion_mnist_real_test_split():
    images, labels = load_fashion_mnist(None, "test")
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    # the first test image is an ankle boot (class 9), as in the dataset's README
    assert labels[0].item() == 9 and 0 < images[0].float().mean() < 255


def test_fashion_mnist_loaders_pad_to_32_and_normalise():
    cfg = DataConfig(dataset="fashion_mnist", subset=64, eval_subset=10, batch_size=32)
    loaders = build_loaders(cfg, CPU)
    assert loaders.num_classes == 10 and loaders.input_size == (1, 32, 32)
    assert len(loaders.train) == 2 and len(loaders.eval) == 1
    x, y = next(loaders.eval.batches(0))
    assert x.shape == (10, 1, 32, 32) and y.shape == (10,)
    zero = (0 - 0.2860) / 0.3530
    # the 2-pixel border added to the 28x28 image is zero before normalisation
    assert torch.allclose(x[:, :, :2], torch.full_like(x[:, :, :2], zero))
    raw, _ = load_fashion_mnist(None, "test")
    assert torch.allclose(x[0, 0, 2:30, 2:30], (raw[0, 0].float() / 255 - 0.2860) / 0.3530)


def _write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gz_and_raw(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if gz else "a")
    _write_idx(path, array, gz)
    assert np.array_equal(read_idx(path), array)


def test_read_idx_truncated_and_bad_magic(tmp_path):
    path = tmp_path / "x"
    _write_idx(path, np.zeros((2, 3), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_fashion_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable IDX file"):
        load_fashion_mnist(tmp_path, "test")


# ------------------------------------------------------------------ CIFAR pickles


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_official_layout(tmp_path, name, classes):
    directory = write_cifar(tmp_path, name, per_file=4)
    train_x, train_y = load_cifar(tmp_path, name, "train", checksum=False)
    test_x, _ = load_cifar(directory, name, "test", checksum=False)  # the folder itself works too
    files = 5 if name == "cifar10" else 1
    assert train_x.shape == (4 * files, 3, 32, 32) and train_x.dtype == torch.uint8
    assert test_x.shape == (4, 3, 32, 32) and train_y.min() >= 0 and train_y.max() < classes
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    first = "data_batch_1" if name == "cifar10" else "train"
    with open(directory / first, "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    assert train_x[0, 1, 2, 3] == row[1024 + 2 * 32 + 3]
    assert train_x[0, 2, 31, 0] == row[2048 + 31 * 32]


def test_cifar_md5_checked(tmp_path, monkeypatch):
    directory = write_cifar(tmp_path, "cifar100")
    with pytest.raises(DataError, match=r"train is corrupt: md5 .* != published"):
        load_cifar(tmp_path, "cifar100", "train")
    digests = {f: hashlib.md5((directory / f).read_bytes()).hexdigest() for f in ("train", "test")}
    folder, files, key, n = cifar_module.LAYOUTS["cifar100"]
    patched = {split: [(f, digests[f]) for f, _ in entries] for split, entries in files.items()}
    monkeypatch.setitem(cifar_module.LAYOUTS, "cifar100", (folder, patched, key, n))
    assert load_cifar(tmp_path, "cifar100", "train")[0].shape == (6, 3, 32, 32)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.remove, (self.path,))


def test_cifar_unpickler_refuses_other_globals(tmp_path):
    directory = write_cifar(tmp_path, "cifar100")
    marker = tmp_path / "marker"
    marker.write_text("still here")
    with open(directory / "test", "wb") as f:
        pickle.dump({b"data": _Evil(str(marker))}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(tmp_path, "cifar100", "test", checksum=False)
    assert marker.exists()


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(DataError, match=r"data_batch_1 not found; download cifar-10-python"):
        load_cifar(tmp_path, "cifar10", "train")
    directory = write_cifar(tmp_path, "cifar10")
    (directory / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="is not a CIFAR pickle batch"):
        load_cifar(tmp_path, "cifar10", "test", checksum=False)
    with open(directory / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match=r"expected b'data' uint8 \(N, 3072\)"):
        load_cifar(tmp_path, "cifar10", "test", checksum=False)


def test_cifar_loaders_normalise_with_official_statistics(cifar_roots):
    cfg = DataConfig(
        dataset="cifar10",
        root=str(cifar_roots["cifar10"]),
        checksum=False,
        batch_size=8,
        eval_batch_size=4,
    )
    loaders = build_loaders(cfg, CPU)
    assert (loaders.num_classes, loaders.input_size) == (10, (3, 32, 32))
    assert len(loaders.train) == 30 // 8 and loaders.eval.num_samples == 6
    x, _ = next(loaders.eval.batches(0))
    raw, _ = load_cifar(cifar_roots["cifar10"], "cifar10", "test", checksum=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x[0], (raw[0].float() / 255 - mean) / std, atol=1e-5)


# ------------------------------------------------------------------ image folders


@pytest.fixture
def image_tree(tmp_path):
    colours = {"cat": (250, 10, 10), "dog": (10, 10, 250)}
    for split, count in (("train", 3), ("val", 2)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                ext = ".png" if i % 2 else ".JPEG"
                Image.new("RGB", (40 + 7 * i, 30), colour).save(
                    tmp_path / split / name / f"{i}{ext}"
                )
    return tmp_path


def test_imagefolder_loaders(image_tree):
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(image_tree),
        image_size=16,
        batch_size=2,
        eval_batch_size=3,
        workers=0,
    )
    loaders = build_loaders(cfg, CPU, seed=1)
    assert (loaders.num_classes, loaders.input_size) == (2, (3, 16, 16))
    assert len(loaders.train) == 3 and len(loaders.eval) == 2
    evals = list(loaders.eval.batches(0))
    labels = torch.cat([y for _, y in evals])
    assert labels.tolist() == [0, 0, 1, 1]
    # a uniform red image stays red after resize + centre crop (JPEG: nearly)
    red = (
        torch.tensor([250.0, 10.0, 10.0]) / 255 - torch.tensor([0.485, 0.456, 0.406])
    ) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(evals[0][0][1].mean(dim=(1, 2)), red, atol=0.05)
    first = [x for x, _ in loaders.train.batches(0)]
    again = [x for x, _ in loaders.train.batches(0)]
    other = [x for x, _ in loaders.train.batches(1)]
    assert first[0].shape == (2, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_imagefolder_workers_give_the_same_batches(image_tree):
    def batches(workers):
        cfg = DataConfig(
            dataset="imagefolder", root=str(image_tree), image_size=8, batch_size=2, workers=workers
        )
        return [x for x, _ in build_loaders(cfg, CPU, seed=3).train.batches(2)]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(1), strict=True))


def test_imagefolder_errors(image_tree, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match=r"train not found; data.root must hold train/ and val/"):
        build_loaders(DataConfig(dataset="imagefolder", root=str(empty)), CPU)
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_loaders(DataConfig(dataset="imagefolder"), CPU)
    (image_tree / "train" / "cat" / "9.png").write_bytes(b"not a png")
    cfg = DataConfig(
        dataset="imagefolder", root=str(image_tree), image_size=8, batch_size=7, workers=1
    )
    with pytest.raises(DataError) as err:
        list(build_loaders(cfg, CPU).train.batches(0))
    assert str(err.value).startswith("cannot read image") and "\n" not in str(err.value)


def test_color_jitter_each_operation():
    red = Image.new("RGB", (8, 8), (200, 0, 0))
    assert color_jitter(red, (0, 0, 0, 0), random.Random(0)) is red  # all strengths 0: no-op
    # hue: +1/3 turn takes pure red to green (trunc(255 / 3) = 85 of 256 steps)
    green = adjust_hue(red, 1 / 3).getpixel((0, 0))
    assert green[1] > 150 > green[0]
    assert adjust_hue(red, 0.0).getpixel((0, 0)) == (200, 0, 0)
    # brightness only: every pixel scaled by one factor in [0.5, 1.5], drawn from the rng
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    factors = set()
    for seed in range(20):
        out = np.asarray(color_jitter(grey, (0.5, 0, 0, 0), random.Random(seed)), dtype=float)
        assert out.std() == 0 and 50 <= out.mean() <= 150
        factors.add(out.mean())
        again = np.asarray(color_jitter(grey, (0.5, 0, 0, 0), random.Random(seed)), dtype=float)
        assert np.array_equal(out, again)
    assert len(factors) > 10
    # saturation 0..2 on a grey image and contrast on a uniform image change nothing
    assert color_jitter(grey, (0, 0.9, 0.9, 0), random.Random(1)).getpixel((3, 3)) == (100,) * 3


def test_imagefolder_color_jitter_and_crop_scale(image_tree):
    def batches(**keys):
        cfg = DataConfig(
            dataset="imagefolder", root=str(image_tree), image_size=8, batch_size=2, workers=0
        )
        for key, value in keys.items():
            setattr(cfg, key, value)
        return torch.cat([x for x, _ in build_loaders(cfg, CPU, seed=3).train.batches(1)])

    plain, jittered = batches(), batches(color_jitter=[0.4, 0.4, 0.4, 0.1])
    assert not torch.equal(plain, jittered)
    assert torch.equal(jittered, batches(color_jitter=[0.4, 0.4, 0.4, 0.1]))
    with pytest.raises(ConfigError, match=r"data.color_jitter: .* hue <= 0.5"):
        batches(color_jitter=[0.2, 0.2, 0.2, 0.7])
    with pytest.raises(ConfigError, match=r"data.crop_scale: \[0.5, 0.2\] is not 0 < min <= max"):
        batches(crop_scale=[0.5, 0.2])


def test_random_resized_box_within_the_image():
    rng = random.Random(0)
    for _ in range(200):
        w, h = rng.randint(10, 300), rng.randint(10, 300)
        left, top, right, bottom = random_resized_box(w, h, rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        area = (right - left) * (bottom - top) / (w * h)
        assert area <= 1.0


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0)])
def test_random_resized_box_area_and_aspect_cover_their_ranges(scale):
    # RandomResizedCrop: area a fraction in `scale` of the image's, aspect w/h in [3/4, 4/3]. The
    # side lengths are rounded: a box passes if sides within half a pixel of its own meet both
    # bounds. Images of an aspect in [3/4, 4/3]: the fallback (whole image) is in range too.
    rng = random.Random(0)
    areas, aspects = [], []
    for _ in range(500):
        h = rng.randint(60, 300)
        w = rng.randint(-(-3 * h // 4), 4 * h // 3)
        left, top, right, bottom = random_resized_box(w, h, rng, scale=scale)
        bw, bh = right - left, bottom - top
        assert (bw + 0.5) * (bh + 0.5) >= scale[0] * w * h
        assert (bw - 0.5) / (bh + 0.5) <= 4 / 3 and (bw + 0.5) / (bh - 0.5) >= 3 / 4
        areas.append(bw * bh / (w * h))
        aspects.append(bw / bh)
    # the whole of both ranges is drawn from, not a part of them
    assert min(areas) < scale[0] + 0.05 and max(areas) > 0.9
    assert min(aspects) < 0.8 and max(aspects) > 1.25


# ------------------------------------------------------------------ device loader


def test_random_crop_matches_slicing_the_padded_image():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [4, 4]])
    out = random_crop(x, 4, offsets)
    padded = F.pad(x, (4, 4, 4, 4))
    for b, (oy, ox) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], padded[b, :, oy : oy + 8, ox : ox + 8])
    assert torch.equal(out[4], x[4])  # offset (pad, pad) is the identity


def _loader(n=10, batch=4, train=True, augment="crop_flip", seed=0):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return DeviceLoader(
        images,
        torch.arange(n),
        batch,
        Normalize((0.0,), (1 / 255,), CPU),
        train=train,
        augment=augment,
        pad=1,
        seed=seed,
    )


def test_device_loader_order_is_a_function_of_seed_and_epoch():
    labels = [
        torch.cat([y for _, y in _loader(seed=s).batches(e)])
        for s, e in [(0, 0), (0, 0), (0, 1), (1, 0)]
    ]
    assert len(labels[0]) == 8  # 10 // 4 full batches: drop_last
    assert torch.equal(labels[0], labels[1])
    assert not torch.equal(labels[0], labels[2]) and not torch.equal(labels[0], labels[3])
    assert len(set(labels[0].tolist())) == 8


def test_device_loader_eval_in_order_and_unaugmented():
    batches = list(_loader(train=False).batches(0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    # Normalize(mean 0, std 1/255) maps uint8 v to v exactly
    assert torch.equal(x[:, 0, 0, 0], torch.arange(10.0))
    assert torch.equal(x, x[:, :, :1, :1].expand_as(x))


def test_device_loader_flip_and_crop_change_images():
    n = 64
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(n, 1, 1, 1)
    norm = Normalize((0.0,), (1 / 255,), CPU)
    flip = DeviceLoader(images, torch.zeros(n), n, norm, train=True, augment="flip")
    x, _ = next(flip.batches(0))
    flipped = (x == images[0].flip(2).float()).all(dim=(1, 2, 3))
    same = (x == images[0].float()).all(dim=(1, 2, 3))
    assert (flipped | same).all() and 10 < flipped.sum() < 54
    crop = DeviceLoader(images, torch.zeros(n), n, norm, train=True, augment="crop", pad=2)
    x, _ = next(crop.batches(0))
    assert (x == 0).any(dim=(1, 2, 3)).sum() > 30  # most crops show some zero padding


@pytest.mark.parametrize(
    "config,message",
    [
        ("fmnist/resnet20_fp.yaml", "Fashion-MNIST train files not found in"),
        ("cifar10/resnet20_recu.yaml", "cifar10 file"),
        ("cifar100/resnet20_irnet.yaml", "cifar100 file"),
    ],
)
def test_cli_missing_data_is_one_line_exit_2(config, message, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onebit",
            "train",
            str(ROOT / "configs" / config),
            "--set",
            f"data.root={tmp_path / 'none'}",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"onebit: error: {message}") and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------ hostile dataset files


def test_idx_hostile_files_are_data_errors(tmp_path):
    """A flipped byte inside the gzip stream, sizes whose product overflows, and a small
    gzip that declares and holds far more data than any IDX file onebit reads (a "gzip
    bomb"): each a DataError, read in bounded memory."""
    path = tmp_path / "x.gz"
    _write_idx(path, np.arange(4000, dtype=np.uint8).reshape(10, 20, 20), gz=True)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"not a readable IDX file|truncated or corrupt"):
        read_idx(path)
    overflow = tmp_path / "o"
    overflow.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**31))
    with pytest.raises(DataError, match=r"declares .* bytes of data"):
        read_idx(overflow)
    bomb = tmp_path / "bomb.gz"
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 2**31)
    with gzip.open(bomb, "wb") as f:
        f.write(header)
        for _ in range(64):
            f.write(bytes(2**20))  # 64 MiB of zeros, ~65 KB on disk
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DataError, match="declares 2147483648 bytes"):
        read_idx(bomb)
    extra = tmp_path / "extra.gz"
    with gzip.open(extra, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(100))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(extra)


@pytest.mark.parametrize(
    "labels,message",
    [
        (["3", "1"], "labels must be integers"),
        ([float("nan"), 1], "labels must be integers"),
        ([2**70, 1], "labels must be integers"),
        ([True, 1], "labels must be integers"),
        ([10, 1], "labels must be integers 0-9"),
        ([], r"N > 0|not a CIFAR pickle batch"),  # numpy pickles no data as bytes()
    ],
)
def test_cifar_hostile_labels_and_empty_batches(tmp_path, labels, message):
    directory = write_cifar(tmp_path, "cifar10", per_file=2)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        with open(directory / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch[b"labels"] = labels
        batch[b"data"] = batch[b"data"][: len(labels)]
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with pytest.raises(DataError, match=message):
        load_cifar(tmp_path, "cifar10", "train", checksum=False)


def test_imagefolder_skips_fifos_and_refuses_decompression_bombs(image_tree):
    os.mkfifo(image_tree / "train" / "cat" / "x.png")  # reading it would never return
    cfg = DataConfig(
        dataset="imagefolder", root=str(image_tree), image_size=16, workers=0, batch_size=2
    )
    loaders = build_loaders(cfg, CPU)
    assert loaders.train.num_samples == 6  # the FIFO is not an image
    Image.MAX_IMAGE_PIXELS, limit = 100, Image.MAX_IMAGE_PIXELS  # every test image is a bomb
    try:
        with pytest.raises(DataError, match=r"cannot read image .*decompression bomb"):
            next(iter(loaders.eval.batches(0)))
    finally:
        Image.MAX_IMAGE_PIXELS = limit
