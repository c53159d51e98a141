"""ImageNet-layout image folders (root/{train,val}/<class>/<image>) read with Pillow.

Training: RandomResizedCrop(image_size, scale [0.08, 1] (``crop_scale``), ratio [3/4, 4/3]),
optional ColorJitter (``color_jitter``), horizontal flip; evaluation: resize the shorter side
to image_size / 0.875 (256 for 224), centre crop. The same algorithms as torchvision's
transforms on PIL images (torchvision is not needed). Images leave the DataLoader workers as
uint8 and are normalised on the device. Each sample's crop, jitter and flip come from a
generator seeded by (seed, epoch, index), so they depend neither on the worker count nor on
the number of processes. Pillow is the optional ``vision`` extra: ``pip install -e
".[vision]"`` in a clone.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from onebit.data.gpu_loader import BatchCount, Normalize, batch_bounds, epoch_generator
from onebit.errors import DataError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            'image folders need Pillow: pip install -e ".[vision]" in a clone '
            "(or pip install pillow)"
        ) from None
    return Image


def scan_folder(root: Path, split: str, classes: list[str] | None = None):
    """(paths, labels, classes) of ``root/split/<class>/*``; classes sorted by name."""
    directory = root / split
    if not directory.is_dir():
        raise DataError(
            f"image folder {directory} not found; data.root must hold train/ and val/, each "
            "with one sub-folder of images per class (the ImageNet layout)"
        )
    found = sorted(p.name for p in directory.iterdir() if p.is_dir())
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{directory} has classes that {root / 'train'} lacks: {unknown[:5]}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = directory / name
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        for path in files:
            # regular files only: reading a FIFO or a device named x.png would never end
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                paths.append(path)
                labels.append(label)
    if not paths:
        raise DataError(f"image folder {directory} holds no images ({', '.join(EXTENSIONS)})")
    return paths, labels, classes


def random_resized_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom): area in ``scale`` of the
    image, aspect in ``ratio`` (log-uniform), 10 tries, else a centre crop of clamped aspect."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def adjust_hue(img, shift: float):
    """Rotate the hue of a PIL RGB image by ``shift`` turns: H += trunc(255 shift) in HSV with
    uint8 wrap-around (torchvision's PIL ``adjust_hue``)."""
    image_mod = _pil()
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int16) + int(shift * 255)) % 256
    h = image_mod.fromarray(shifted.astype(np.uint8), "L")
    return image_mod.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img, strengths: tuple[float, float, float, float], rng: random.Random):
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` on a PIL RGB image.

    Factors b, c, s ~ U[max(0, 1 - v), 1 + v] and hue shift h ~ U[-v_h, v_h] (a strength of 0
    skips its operation), applied in a random order: brightness x * b, contrast and saturation
    blend with the grey mean / the greyscale image (PIL ``ImageEnhance``, torchvision's PIL
    path), hue by :func:`adjust_hue`. IR-Net's ImageNet recipe: strengths 0.2, 0.2, 0.2, 0.1.
    """
    from PIL import ImageEnhance

    def enhance(kind):
        return lambda image, factor: kind(image).enhance(factor)

    adjust = (
        enhance(ImageEnhance.Brightness),
        enhance(ImageEnhance.Contrast),
        enhance(ImageEnhance.Color),
        adjust_hue,
    )
    ranges = [(max(0.0, 1 - v), 1 + v) for v in strengths[:3]] + [(-strengths[3], strengths[3])]
    ops = [
        (fn, rng.uniform(*bounds))
        for fn, v, bounds in zip(adjust, strengths, ranges, strict=True)
        if v > 0
    ]
    for fn, factor in rng.sample(ops, len(ops)):
        img = fn(img, factor)
    return img


class ImageFolder(Dataset):
    """One split of an image folder; items are (uint8 tensor (3, S, S), label).

    ``crop_scale``: the area range of the training RandomResizedCrop; ``jitter``: colour-jitter
    strengths (brightness, contrast, saturation, hue) or None.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        image_size: int,
        train: bool,
        seed: int = 0,
        classes: list[str] | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter: tuple[float, float, float, float] | None = None,
    ):
        _pil()
        self.paths, self.labels, self.classes = scan_folder(root, split, classes)
        self.image_size, self.train, self.seed, self.epoch = image_size, train, seed, 0
        self.crop_scale, self.jitter = crop_scale, jitter

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image_mod = _pil()
        path, size = self.paths[index], self.image_size
        try:
            with image_mod.open(path) as f:
                img = f.convert("RGB")
        except (OSError, ValueError, image_mod.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {str(err)[:200]}") from None
        if self.train:
            rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
            box = random_resized_box(*img.size, rng, self.crop_scale)
            img = img.resize((size, size), image_mod.BILINEAR, box=box)
            if self.jitter:
                img = color_jitter(img, self.jitter, rng)
            if rng.random() < 0.5:
                img = img.transpose(image_mod.FLIP_LEFT_RIGHT)
        else:
            short = round(size / 0.875)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize(
                (max(short, round(w * scale)), max(short, round(h * scale))), image_mod.BILINEAR
            )
            left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1), self.labels[index]


class FolderLoader(BatchCount):
    """Batches of an :class:`ImageFolder` through DataLoader workers, normalised on ``device``.

    The training order of an epoch is a permutation drawn from (seed, epoch); full batches only.
    ``batch_size`` is the batch of all processes together; process ``rank`` of ``world`` loads
    its part of each batch (:func:`~onebit.data.gpu_loader.batch_bounds`).
    """

    def __init__(
        self,
        dataset: ImageFolder,
        batch_size: int,
        normalize: Normalize,
        device: torch.device,
        workers: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.dataset, self.batch_size, self.normalize = dataset, batch_size, normalize
        self.device, self.workers, self.seed = device, workers, seed
        self.rank, self.world = rank, world
        self.train = dataset.train

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def batches(
        self, epoch: int, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of the batches of ``epoch``; a corrupt image is a one-line
        DataError. ``augment=False``: the training order with the evaluation transform
        (resize + centre crop)."""
        self.dataset.epoch = epoch
        dataset = self.dataset
        if not augment and dataset.train:
            dataset = copy.copy(dataset)
            dataset.train = False
        n = self.num_samples
        order = (
            torch.randperm(n, generator=epoch_generator(self.seed, epoch)).tolist()
            if self.train
            else list(range(n))
        )
        bounds = batch_bounds(n, self.batch_size, len(self), self.rank, self.world)
        loader = DataLoader(
            dataset,
            batch_sampler=[order[lo:hi] for lo, hi in bounds],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        try:
            for x, y in loader:
                x = x.to(self.device, non_blocking=True)
                yield self.normalize(x), y.to(self.device, non_blocking=True)
        except DataError as err:
            # from a worker the message carries the worker's traceback; keep its last line
            raise DataError(str(err).rsplit("DataError: ", 1)[-1].strip()) from None
