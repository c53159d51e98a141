"""What a model's input is and how raw images become it (like timm's ``pretrained_cfg``).

A trained or exported model carries an :class:`InputSpec`: channels and side of the batch it
takes, the normalisation, how a raw image is brought to that side (Fashion-MNIST's 28x28 is
zero-padded to 32; image folders are resized and centre-cropped), the dataset and its class
names. The export header stores it, so a deployed model can ``preprocess`` and ``predict``
raw images on its own (:class:`onebit.deploy.DeployedModel`). numpy only (the resize of
"resize_crop" too), so a deployment without PyTorch preprocesses too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onebit.errors import ExportError

TRANSFORMS = ("none", "pad", "resize_crop")
# The evaluation resize of image folders: shorter side to size / 0.875, then a centre crop.
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class InputSpec:
    """The input of a model and how to make it from raw images.

    ``channels`` x ``size`` x ``size``: the float batch the network takes, normalised as
    (x / 255 - mean) / std per channel. ``transform``: "pad" zero-pads raw images (of side
    ``raw_size``) centred to ``size`` before normalising (Fashion-MNIST); "resize_crop"
    resizes the shorter side to size / 0.875 and crops the centre (ImageNet evaluation);
    "none" takes images of side ``size``. ``class_names``: index -> name, where known.
    """

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: str = "none"
    raw_size: int | None = None
    dataset: str | None = None
    class_names: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(
        cls, data: object, where: str, what: str = "the header's input spec"
    ) -> InputSpec:
        """The spec in an export header; ExportError naming ``where`` if it is malformed."""

        def bad(detail: str) -> ExportError:
            return ExportError(f"{where}: {what} is malformed ({detail})")

        if not isinstance(data, dict):
            raise bad("not a mapping")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise bad(f"unknown key {sorted(unknown)[0]!r}")
        channels, size = data.get("channels"), data.get("size")
        for name, value in (("channels", channels), ("size", size)):
            if not _small_int(value) or value < 1:
                raise bad(f"{name} must be a positive integer")
        mean, std = data.get("mean"), data.get("std")
        for name, values in (("mean", mean), ("std", std)):
            if (
                not isinstance(values, list)
                or len(values) != channels
                or not all(_finite(v) for v in values)
            ):
                raise bad(f"{name} must be {channels} numbers")
        if not all(v > 0 for v in std):
            raise bad("std must be positive")
        transform = data.get("transform", "none")
        if transform not in TRANSFORMS:
            raise bad(f"transform must be one of {', '.join(TRANSFORMS)}")
        raw_size = data.get("raw_size")
        if raw_size is not None and (not _small_int(raw_size) or not 0 < raw_size <= size):
            raise bad("raw_size must be a positive integer no larger than size")
        dataset = data.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise bad("dataset must be a string")
        names = data.get("class_names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise bad("class_names must be a list of strings")
        return cls(
            channels,
            size,
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std),
            transform,
            raw_size,
            dataset,
            None if names is None else tuple(names),
        )

    def describe(self) -> str:
        """One phrase: the batch the network takes."""
        return (
            f"a float batch (N, {self.channels}, {self.size}, {self.size}) normalised as "
            f"(x / 255 - {list(self.mean)}) / {list(self.std)}"
        )

    def preprocess(self, images: Any) -> np.ndarray:
        """Raw images -> the normalised float32 batch (N, C, size, size), a numpy array.

        ``images``: an array or tensor, uint8 in [0, 255] or float in [0, 1], shaped (H, W),
        (N, H, W) (one channel), (C, H, W), (H, W, C), (N, C, H, W) or (N, H, W, C).
        """
        x = self._batch(np.asarray(images))
        if 0 in x.shape[-2:]:
            raise ValueError(
                f"images of {x.shape[-2]}x{x.shape[-1]} pixels: there is nothing to see"
            )
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255
        elif x.dtype.kind == "f" and x.dtype.itemsize <= 8:
            x = x.astype(np.float32)
            if x.size and not np.isfinite(x).all():
                raise ValueError("images hold NaN or infinite values")
            if x.size and (x.min() < 0 or x.max() > 1):
                raise ValueError(
                    f"float images must lie in [0, 1] (these span {x.min():g} to {x.max():g}); "
                    "give uint8 images for 0-255, or divide by 255"
                )
        else:
            raise ValueError(f"images must be uint8 or float, got {x.dtype}")
        h, w = x.shape[-2:]
        if self.transform == "pad" and (h, w) != (self.size, self.size):
            if h > self.size or w > self.size:
                raise ValueError(
                    f"images of {h}x{w} are larger than the model's {self.size}x{self.size} "
                    f"(raw images are {self.raw_size}x{self.raw_size}, zero-padded)"
                )
            top, left = (self.size - h) // 2, (self.size - w) // 2
            pads = ((0, 0), (0, 0), (top, self.size - h - top), (left, self.size - w - left))
            x = np.pad(x, pads)
        elif self.transform == "resize_crop" or (h, w) != (self.size, self.size):
            short = round(self.size / CROP_FRACTION) if self.transform == "resize_crop" else None
            x = _resize_centre_crop(x, self.size, short)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)

    def _batch(self, x: np.ndarray) -> np.ndarray:
        """``x`` as (N, C, H, W), from any of the layouts :meth:`preprocess` accepts."""
        c = self.channels
        if x.ndim == 2 and c == 1:
            return x[None, None]
        if x.ndim == 3:
            if x.shape[0] == c:
                return x[None]
            if x.shape[-1] == c and c > 1:
                return x.transpose(2, 0, 1)[None]
            if c == 1 and x.shape[-1] in (3, 4) and x.shape[1] > 4:  # no image is 3 wide
                raise ValueError(
                    f"images of shape {tuple(x.shape)} look like one colour image (H, W, "
                    f"{x.shape[-1]}), and the model takes 1 channel: convert it to grey first "
                    "(or give a batch as (N, 1, H, W))"
                )
            if c == 1:
                return x[:, None]
        if x.ndim == 4:
            if x.shape[1] == c:
                return x
            if x.shape[-1] == c:
                return x.transpose(0, 3, 1, 2)
        raise ValueError(
            f"images of shape {tuple(x.shape)} do not have the model's {c} channel(s); give "
            f"(H, W){', (N, H, W)' if c == 1 else ''}, (C, H, W), (H, W, C), (N, C, H, W) or "
            "(N, H, W, C)"
        )


def _resize_centre_crop(x: np.ndarray, size: int, short: int | None) -> np.ndarray:
    """Resize the shorter side to ``short`` (None: ``size``), then crop the centre square:
    PyTorch's antialiased bilinear resize (``F.interpolate(..., mode="bilinear",
    align_corners=False, antialias=True)``) in numpy, one axis at a time (width, then height),
    the cropped rows and columns only. The C runtime's ``onebit-run`` computes the same float32
    operations in the same order (the same bits)."""
    h, w = x.shape[-2:]
    scale = (short or size) / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    rows = _resize_weights(h, new[0], top, size)
    # the width pass on the band of rows the kept output rows read, not the whole image
    band = min(rows[0], default=0), max((a + len(t) for a, t in zip(*rows, strict=True)), default=0)
    x = x[..., band[0] : band[1], :].astype(np.float32)
    x = _resize_axis(x, _resize_weights(w, new[1], left, size))  # the width
    rows = ([a - band[0] for a in rows[0]], rows[1])
    return _resize_axis(x.swapaxes(-1, -2), rows).swapaxes(-1, -2).copy()


def _resize_axis(x: np.ndarray, taps: tuple[list[int], list[list[np.float32]]]) -> np.ndarray:
    """Resize the last axis of ``x``: output i is the sum over its taps ``taps`` (first input,
    weights: :func:`_resize_weights`) in order of input * weight (float32, a rounding per
    product and per sum, from the first product), as aten sums them."""
    lo, weights = taps
    out = np.zeros((*x.shape[:-1], len(lo)), np.float32)
    for j in range(max((len(wj) for wj in weights), default=0)):
        cols = np.array([i for i, wj in enumerate(weights) if j < len(wj)])
        taps_j = np.array([lo[i] + j for i in cols])
        w_j = np.array([weights[i][j] for i in cols], np.float32)
        out[..., cols] = out[..., cols] + x[..., taps_j] * w_j
    return out


def _resize_weights(n_in: int, n_out: int, first: int, count: int):
    """For outputs ``first`` .. ``first + count - 1`` of n_out: the first input each reads and
    its weights (float32), as PyTorch's antialiased bilinear resize makes them (aten
    UpSample.h, ``_compute_weights_aa``, in float32 for float images): the triangle filter
    widened by the scale when shrinking, over the inputs within its support, divided by their
    sum."""
    f = np.float32
    scale = f(n_in) / f(n_out)
    support = scale if scale >= 1 else f(1)
    invscale = f(1) / scale if scale >= 1 else f(1)
    starts, rows = [], []
    for i in range(first, first + count):
        centre = scale * f(i + 0.5)
        lo = max(int(centre - support + f(0.5)), 0)
        hi = min(int(centre + support + f(0.5)), n_in)
        weights = [
            max(f(0), f(1) - abs((f(j) - centre + f(0.5)) * invscale)) for j in range(lo, hi)
        ]
        total = f(0)
        for wj in weights:  # in order, as PyTorch sums them
            total = f(total + wj)
        starts.append(lo)
        rows.append([f(wj / total) for wj in weights] if total != 0 else weights)
    return starts, rows


def _small_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value < 2**31


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
