"""The ``data:`` section of a recipe: which dataset, where, batch sizes, augmentation, the
validation split and the normalisation (registered in :mod:`onebit.data`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from onebit.config import Bool, Float, Int, Str, kinds, section


@section
class DataConfig:
    """Which dataset, where it is, batch sizes, training augmentation, the validation split
    held out of the training images and the normalisation."""

    KIND: ClassVar[str] = "dataset"  # image folders and in-memory datasets have own options
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "in_memory": ("subset", "eval_subset", "val_split", "val_split_seed"),
        "imagefolder": ("image_size", "workers", "crop_scale", "color_jitter"),
    }
    dataset: Str = "cifar10"
    root: Str | None = None
    batch_size: Int = Field(128, ge=1)
    eval_batch_size: Int = Field(128, ge=1)
    augment: Literal["crop_flip", "crop", "flip", "none"] = "crop_flip"
    # the in-memory datasets only (an image folder has its own val/)
    subset: Int | None = Field(None, ge=1)
    eval_subset: Int | None = Field(None, ge=1)
    checksum: Bool = True
    # image folders only
    image_size: Int = Field(224, ge=8)
    workers: Int = Field(8, ge=0)
    crop_scale: list[Float] = Field(default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2)
    color_jitter: list[Float] | None = Field(None, min_length=4, max_length=4)
    # Held out of the training images as the validation split: a count, or a fraction of them;
    # which ones depends on val_split_seed alone (the split is part of the recipe, not the seed).
    val_split: Int | Float | None = None
    val_split_seed: Int = Field(0, ge=0, le=2**63 - 1)
    # Normalisation per channel; null: the dataset's own statistics.
    mean: list[Float] | None = None
    std: list[Float] | None = None

    @staticmethod
    def kind_of(dataset: Any) -> str:
        return "imagefolder" if dataset == "imagefolder" else "in_memory"


DataKinds = kinds(DataConfig)
