"""Batches of a dataset held on the device as uint8, augmented in batch on the device.

The whole dataset is one uint8 tensor (N, C, H, W) on the training device (a GPU, or the CPU
where there is none: the same code runs there). An epoch is a permutation; each batch is
gathered, randomly cropped (zero padding ``pad``, as torchvision's RandomCrop(padding=pad)) and
flipped with a few tensor ops, then normalised. The order and every random crop/flip are
drawn from a generator seeded by (seed, epoch), so an epoch is the same whenever it is rerun:
that is what makes ``--resume`` exact. Fast because it does less (airbench's habit).
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


class DeviceLoader:
    """Batches of (normalised float images, int64 labels) from uint8 tensors on the device.

    Training (``train=True``): a new permutation every epoch, full batches only (drop_last,
    so every step has the same shape), ``augment`` in {"crop_flip", "crop", "flip", "none"}.
    Evaluation: every sample in order, no augmentation.
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
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.normalize = batch_size, normalize
        self.train, self.pad, self.seed = train, pad, seed
        self.crop = train and "crop" in augment and pad > 0
        self.flip = train and "flip" in augment

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.train else -(-n // b)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` (a pure function of (seed, epoch))."""
        device, n, b = self.images.device, self.num_samples, self.batch_size
        if not self.train:
            for i in range(len(self)):
                batch = slice(i * b, (i + 1) * b)
                yield self.normalize(self.images[batch]), self.labels[batch]
            return
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g).to(device)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(device)
        flips = (torch.rand(n, generator=g) < 0.5).to(device)
        for i in range(len(self)):
            idx = order[i * b : (i + 1) * b]
            x = self.images[idx]
            if self.crop:
                x = random_crop(x, self.pad, offsets[i * b : (i + 1) * b])
            if self.flip:
                x = torch.where(flips[i * b : (i + 1) * b, None, None, None], x.flip(3), x)
            yield self.normalize(x), self.labels[idx]
