"""BatchNorm running statistics that describe the weights they are stored with.

In 1-bit training the running mean/var are an EMA (momentum 0.1: the last ~10-20 steps) of
statistics that sign flips keep changing, so the stored values can lag the network they are
saved with (docs/training.md, "BatchNorm statistics"). :func:`recalibrate_bn` re-estimates
them from training batches with the weights fixed: reset, then a cumulative average over N
batches in train mode without gradients (``momentum=None``), as torchvision's
``update_bn`` / SWA does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from onebit.nn import BATCHNORMS

# Batches `onebit export` re-estimates the statistics from when the run's config sets none
# (eval.bn_recalibrate: 0): 50 x 128 = 6,400 images, ~10% of Fashion-MNIST or CIFAR-10.
RECALIBRATE_BATCHES = 50


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    amp_dtype: torch.dtype | None = None,
) -> int:
    """Re-estimate every BatchNorm's running mean/var of ``model`` from the first ``steps``
    of ``batches`` (cumulative average, train mode, no gradient); returns the batches used.

    Only the running statistics change: weights, the binarizers' state and the RNG are left
    as they were, and the model's train/eval mode is restored.
    """
    norms = batchnorms(model)
    if not norms or steps <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    used = 0
    try:
        for x, _ in batches:
            if used == steps:
                break
            with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return used
