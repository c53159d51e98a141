"""Batches of a dataset held on the device as uint8, augmented in batch on the device.

The whole dataset is one uint8 tensor (N, C, H, W) on the training device (a GPU, or the CPU
where there is none: the same code runs there). An epoch is a permutation; each batch is
gathered, randomly cropped (zero padding ``pad``, as torchvision's RandomCrop(padding=pad)) and
flipped with a few tensor ops, then normalised. The order and every random crop/flip are
drawn from a generator seeded by (seed, epoch), so an epoch is the same whenever it is rerun:
that is what makes ``--resume`` exact. Fast because it does less (airbench's habit).

In a multi-process (DistributedDataParallel) run every process draws the same epoch order and
takes its contiguous part of each batch (:func:`batch_bounds`): the processes together see
exactly the batches, crops and flips of a single-process run with the same batch size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream is a function of (seed, epoch) only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def batch_bounds(
    n: int, batch_size: int, steps: int, rank: int = 0, world: int = 1
) -> list[tuple[int, int]]:
    """(lo, hi) positions, in an epoch order of ``n`` samples, of process ``rank``'s part of
    each of the first ``steps`` batches.

    Batch i covers positions [i b, min((i + 1) b, n)); its m positions are split into ``world``
    contiguous parts of floor(m / world) or one more (the first m mod world parts), as
    ``numpy.array_split``. Empty parts (a short last evaluation batch) are left out.
    """
    bounds = []
    for i in range(steps):
        start = i * batch_size
        size, extra = divmod(min(batch_size, n - start), world)
        lo = start + rank * size + min(rank, extra)
        hi = lo + size + (rank < extra)
        if hi > lo:
            bounds.append((lo, hi))
    return bounds


class Normalize:
    """uint8 image batch -> float32 (x / 255 - mean) / std, per channel, on x's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale + self.shift).contiguous()


def random_crop(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each image of x (B, C, H, W) at ``offsets`` (B, 2) from its zero-padded copy.

    out[b] = pad(x[b])[:, oy : oy + H, ox : ox + W] with 0 <= oy, ox <= 2 pad.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices around a slice put their broadcast dims first: (B, H, W, C)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class BatchCount:
    """``len()`` of a loader: full batches only when training (every step has one shape),
    every sample when evaluating. Subclasses set ``train`` and ``batch_size`` and say how
    many samples there are."""

    train: bool
    batch_size: int

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.train else -(-n // b)


class DeviceLoader(BatchCount):
    """Batches of (normalised float images, int64 labels) from uint8 tensors on the device.

    Training (``train=True``): a new permutation every epoch, full batches only (drop_last,
    so every step has the same shape), ``augment`` in {"crop_flip", "crop", "flip", "none"}.
    Evaluation: every sample in order, no augmentation. ``batch_size`` is the batch of all
    processes together; process ``rank`` of ``world`` yields its part of each batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        normalize: Normalize,
        *,
        train: bool,
        augment: str = "none",
        pad: int = 4,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.normalize = batch_size, normalize
        self.train, self.pad, self.seed = train, pad, seed
        self.rank, self.world = rank, world
        self.crop = train and "crop" in augment and pad > 0
        self.flip = train and "flip" in augment

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def batches(
        self, epoch: int, augment: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's part of the batches of ``epoch`` (a pure function of (seed, epoch));
        ``augment=False``: the same training order without the crops and flips."""
        device, n = self.images.device, self.num_samples
        bounds = batch_bounds(n, self.batch_size, len(self), self.rank, self.world)
        if not self.train:
            for lo, hi in bounds:
                yield self.normalize(self.images[lo:hi]), self.labels[lo:hi]
            return
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g).to(device)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
        flips = (torch.rand(n, generator=g) < 0.5).to(device)
        for lo, hi in bounds:
            idx = order[lo:hi]
            x = self.images[idx]
            if self.crop and augment:
                x = random_crop(x, self.pad, offsets[lo:hi])
            if self.flip and augment:
                x = torch.where(flips[lo:hi, None, None, None], x.flip(3), x)
            yield self.normalize(x), self.labels[idx]
