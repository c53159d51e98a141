"""The training loss as a weighted sum of named terms: loss = sum_i w_i * term_i(batch).

Today the only term is cross-entropy; distillation or attention-transfer terms are further
entries of the list :func:`build_loss_terms` returns, computed from the same :class:`Batch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from onebit.config import Config


@dataclass
class Batch:
    """What a loss term may read: the inputs, the targets and the model's output."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class LossTerm:
    name: str
    weight: float
    fn: Callable[[Batch], torch.Tensor]


def cross_entropy(batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of the logits against integer targets; with label smoothing eps the
    target is (1 - eps) one_hot(y) + eps / K over K classes (Bi-Real's official
    ``CrossEntropyLabelSmooth``; Szegedy et al. 2016)."""
    return F.cross_entropy(batch.logits, batch.targets, label_smoothing=label_smoothing)


def build_loss_terms(config: Config) -> list[LossTerm]:
    """The loss terms of a config (cross-entropy with weight 1, ``loss.label_smoothing``)."""
    return [
        LossTerm("ce", 1.0, partial(cross_entropy, label_smoothing=config.loss.label_smoothing))
    ]


def total_loss(terms: list[LossTerm], batch: Batch) -> torch.Tensor:
    """sum_i w_i * term_i(batch)."""
    loss = terms[0].weight * terms[0].fn(batch)
    for term in terms[1:]:
        loss = loss + term.weight * term.fn(batch)
    return loss
