"""Datasets: readers of the on-disk formats and the loaders that feed the trainer.

``build_loaders(config.data, device, seed)`` returns the training and evaluation loaders of
the dataset a config names. Small datasets (Fashion-MNIST, CIFAR) are held on the device as
uint8 and augmented there (:mod:`onebit.data.gpu_loader`); image folders go through
DataLoader workers (:mod:`onebit.data.imagefolder`). Every loader has ``len()`` (batches per
epoch), ``num_samples`` and ``batches(epoch)`` yielding (normalised images, labels) on the device.
The evaluation split is the test set (Fashion-MNIST, CIFAR) or ``val/`` (image folders).
``data.val_split`` holds a validation split out of the training images (Fashion-MNIST, CIFAR):
``Loaders.val``, the same images for every seed (:func:`split_indices`).
``data.batch_size`` is the batch of all processes together: in a multi-process run
(``shard=(rank, world)``) each process yields its ``batch_size / world`` part of every batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from onebit.config import read_section, register_section
from onebit.data.cifar import load_cifar
from onebit.data.config import DataConfig, DataKinds
from onebit.data.fashion_mnist import load_fashion_mnist
from onebit.data.gpu_loader import DeviceLoader, Normalize, epoch_generator
from onebit.data.spec import CROP_FRACTION, InputSpec
from onebit.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from collections.abc import Iterator

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Loader(Protocol):
    num_samples: int

    def __len__(self) -> int: ...

    def batches(
        self, epoch: int, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Loaders:
    """What the trainer needs to know about its data."""

    train: Loader | None  # None when built with train=False (evaluation only)
    eval: Loader
    num_classes: int
    input_size: tuple[int, int, int]
    class_names: list[str] | None = None  # an image folder's (its sub-folder names)
    val: Loader | None = None  # the split held out of the training images (data.val_split)


@dataclass(frozen=True)
class TensorDataset:
    """A dataset small enough to hold in memory: a reader and how to normalise and augment it.

    ``size``: side of the square images in the files; ``pad_to``: images are zero-padded
    (centred) to this size when loaded (Fashion-MNIST 28 -> 32, so that the CIFAR-scale models
    apply); ``crop_pad``: padding of the random crop. One channel per ``mean`` entry.
    """

    read: Callable[[DataConfig, str], tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    pad_to: int | None = None
    crop_pad: int = 4
    class_names: tuple[str, ...] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model sees."""
        side = self.pad_to or self.size
        return (len(self.mean), side, side)


# Normalisation: Fashion-MNIST's own statistics; CIFAR as the official IR-Net / ReCU code
# (ImageNet statistics for CIFAR-10, ReCU's values for CIFAR-100).
TENSOR_DATASETS: dict[str, TensorDataset] = {
    "fashion_mnist": TensorDataset(
        lambda cfg, split: load_fashion_mnist(cfg.root, split),
        10,
        (0.2860,),
        (0.3530,),
        size=28,
        pad_to=32,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": TensorDataset(
        lambda cfg, split: load_cifar(cfg.root, "cifar10", split, cfg.checksum),
        10,
        IMAGENET_MEAN,
        IMAGENET_STD,
        size=32,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
    "cifar100": TensorDataset(
        lambda cfg, split: load_cifar(cfg.root, "cifar100", split, cfg.checksum),
        100,
        (0.507, 0.487, 0.441),
        (0.267, 0.256, 0.276),
        size=32,
    ),
}
DATASETS = (*TENSOR_DATASETS, "imagefolder")


def check_dataset_name(name: str) -> None:
    """ConfigError naming ``data.dataset`` unless ``name`` is a known dataset."""
    if name not in DATASETS:
        raise ConfigError(f"config key data.dataset: {UnknownNameError('dataset', name, DATASETS)}")


def check_data_config(cfg: DataConfig) -> None:
    """ConfigError naming the key unless the dataset is known and ``val_split``, ``mean`` and
    ``std`` fit it (what can be checked without reading the files)."""
    check_dataset_name(cfg.dataset)
    split = cfg.val_split
    if split is not None and cfg.dataset == "imagefolder":
        raise ConfigError(
            "config key data.val_split: not available for imagefolder (an image folder's "
            "val/ is its own held-out split); remove it"
        )
    if split is not None and not (split >= 1 if isinstance(split, int) else 0 < split < 1):
        raise ConfigError(
            f"config key data.val_split: {split!r} is neither a number of images (an integer "
            ">= 1) nor a fraction of them (0 < f < 1)"
        )
    channels = dataset_input_size(cfg)[0]
    for key, values in (("mean", cfg.mean), ("std", cfg.std)):
        if values is not None and len(values) != channels:
            raise ConfigError(
                f"config key data.{key}: {len(values)} values, but {cfg.dataset} has "
                f"{channels} channel(s); give one per channel"
            )
        if values is not None and not all(
            math.isfinite(v) and (key == "mean" or v > 0) for v in values
        ):
            what = "positive numbers" if key == "std" else "finite numbers"
            raise ConfigError(f"config key data.{key}: {values} must be {what}")


register_section("data", DataKinds, position=20, check=check_data_config)


def data_config(values: dict[str, Any]) -> DataConfig:
    """A checked :class:`DataConfig` from the keys of a ``data:`` section."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key data: expected a mapping, got {type(values).__name__}")
    return read_section("data", values)


def _normalisation(
    cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): ``data.mean`` / ``data.std`` where given, else the dataset's ``mean`` /
    ``std``."""
    return tuple(cfg.mean or mean), tuple(cfg.std or std)


def split_indices(n: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out): indices of ``n`` training images, both in file order, holding out
    ``data.val_split`` images (a count, or round(f n), at least 1, for a fraction f).

    The held-out ones are the first of a permutation drawn from a generator seeded with
    ``data.val_split_seed`` alone: every ``runtime.seed`` trains on the same images.
    """
    split = cfg.val_split
    count = split if isinstance(split, int) else max(1, round(split * n))
    if count >= n:
        raise ConfigError(
            f"config key data.val_split: {split!r} holds out {count} of the {n} training "
            "images, leaving none to train on; lower it"
        )
    held = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.val_split_seed))
    kept = torch.ones(n, dtype=torch.bool)
    kept[held[:count]] = False
    return kept.nonzero().squeeze(1), held[:count].sort().values


def dataset_input_size(cfg: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of the images ``cfg``'s dataset feeds the model, without reading it."""
    check_dataset_name(cfg.dataset)
    if cfg.dataset == "imagefolder":
        return (3, cfg.image_size, cfg.image_size)
    return TENSOR_DATASETS[cfg.dataset].input_size


def dataset_input_spec(cfg: DataConfig, class_names: list[str] | None = None) -> InputSpec:
    """The :class:`InputSpec` of models trained on ``cfg``'s dataset (``class_names``: an
    image folder's, which only its files know)."""
    check_data_config(cfg)
    if cfg.dataset == "imagefolder":
        names = tuple(class_names) if class_names else None
        mean, std = _normalisation(cfg, IMAGENET_MEAN, IMAGENET_STD)
        return InputSpec(3, cfg.image_size, mean, std, "resize_crop", None, cfg.dataset, names)
    spec = TENSOR_DATASETS[cfg.dataset]
    channels, side, _ = spec.input_size
    transform = "pad" if spec.pad_to else "none"
    mean, std = _normalisation(cfg, spec.mean, spec.std)
    return InputSpec(channels, side, mean, std, transform, spec.size, cfg.dataset, spec.class_names)


def _head(x: torch.Tensor, n: int | None) -> torch.Tensor:
    return x if n is None else x[:n]


Shard = tuple[int, int]  # (rank, world): this process and the number of processes


def _tensor_loaders(
    spec: TensorDataset,
    cfg: DataConfig,
    device: torch.device,
    seed: int,
    with_train: bool,
    shard: Shard,
) -> Loaders:
    normalize = Normalize(*_normalisation(cfg, spec.mean, spec.std), device)

    def loader(images: torch.Tensor, labels: torch.Tensor, train: bool) -> DeviceLoader:
        if spec.pad_to:
            h, w = images.shape[-2:]
            top, left = (spec.pad_to - h) // 2, (spec.pad_to - w) // 2
            images = F.pad(images, (left, spec.pad_to - w - left, top, spec.pad_to - h - top))
        return DeviceLoader(
            images.to(device),
            labels.to(device),
            cfg.batch_size if train else cfg.eval_batch_size,
            normalize,
            train=train,
            augment=cfg.augment,
            pad=spec.crop_pad,
            seed=seed,
            rank=shard[0],
            world=shard[1],
        )

    train = val = None
    if with_train:
        images, labels = spec.read(cfg, "train")
        if cfg.val_split is not None:  # held out first: data.subset limits what is left
            kept, held = split_indices(len(labels), cfg)
            val = loader(images[held], labels[held], train=False)
            images, labels = images[kept], labels[kept]
        train = loader(_head(images, cfg.subset), _head(labels, cfg.subset), train=True)
    images, labels = spec.read(cfg, "test")
    test = loader(_head(images, cfg.eval_subset), _head(labels, cfg.eval_subset), train=False)
    return Loaders(train, test, spec.num_classes, tuple(test.images.shape[1:]), val=val)


def _folder_loaders(
    cfg: DataConfig, device: torch.device, seed: int, with_train: bool, shard: Shard
) -> Loaders:
    from onebit.data.imagefolder import FolderLoader, ImageFolder

    if not cfg.root:
        raise ConfigError("config key data.root: an image folder needs its path (train/, val/)")
    if cfg.subset or cfg.eval_subset:
        raise ConfigError("config key data.subset / eval_subset: not available for imagefolder")
    low, high = cfg.crop_scale
    if not 0 < low <= high:
        raise ConfigError(f"config key data.crop_scale: {cfg.crop_scale} is not 0 < min <= max")
    jitter = cfg.color_jitter
    if jitter is not None and (min(jitter) < 0 or jitter[3] > 0.5):
        raise ConfigError(
            f"config key data.color_jitter: {jitter} must be [brightness, contrast, saturation, "
            "hue], each >= 0 and hue <= 0.5"
        )
    normalize = Normalize(*_normalisation(cfg, IMAGENET_MEAN, IMAGENET_STD), device)
    root = Path(cfg.root)
    train = ImageFolder(
        root, "train", cfg.image_size, True, seed, crop_scale=(low, high), jitter=jitter
    )
    val = ImageFolder(root, "val", cfg.image_size, False, seed, classes=train.classes)

    def loader(dataset: ImageFolder, batch_size: int) -> FolderLoader:
        return FolderLoader(
            dataset, batch_size, normalize, device, cfg.workers, seed, rank=shard[0], world=shard[1]
        )

    return Loaders(
        loader(train, cfg.batch_size) if with_train else None,
        loader(val, cfg.eval_batch_size),
        len(train.classes),
        dataset_input_size(cfg),
        list(train.classes),
    )


def build_loaders(
    cfg: DataConfig,
    device: torch.device,
    seed: int = 0,
    train: bool = True,
    shard: Shard = (0, 1),
) -> Loaders:
    """Training and evaluation loaders of ``cfg.dataset`` on ``device`` (see module doc);
    ``train=False`` reads the evaluation split only; ``shard=(rank, world)``: this process's
    part of every batch in a run of ``world`` processes."""
    check_data_config(cfg)
    world = shard[1]
    if train and cfg.batch_size % world:
        raise ConfigError(
            f"config key data.batch_size: {cfg.batch_size} is the batch of all {world} "
            f"processes together and must divide evenly among them; use a multiple of {world}"
        )
    if cfg.dataset == "imagefolder":
        loaders = _folder_loaders(cfg, device, seed, train, shard)
    else:
        loaders = _tensor_loaders(TENSOR_DATASETS[cfg.dataset], cfg, device, seed, train, shard)
    if loaders.train is not None and len(loaders.train) == 0:
        raise ConfigError(
            f"config key data.batch_size: {cfg.batch_size} is larger than the "
            f"{loaders.train.num_samples} training samples; lower it or raise data.subset"
        )
    return loaders


__all__ = [
    "CROP_FRACTION",
    "DATASETS",
    "DataConfig",
    "DeviceLoader",
    "InputSpec",
    "Loaders",
    "Normalize",
    "TensorDataset",
    "build_loaders",
    "check_data_config",
    "check_dataset_name",
    "data_config",
    "dataset_input_size",
    "dataset_input_spec",
    "epoch_generator",
    "load_cifar",
    "load_fashion_mnist",
    "split_indices",
]
