"""The training loss as a weighted sum of named terms: loss = sum_i w_i * term_i(batch).

Terms: cross-entropy; with ``distill:`` a distillation term (``kl`` or ReActNet's
``distributional``) and Real-to-Binary's attention transfer, computed from the same
:class:`Batch` (the teacher's output is computed once per batch and kept in ``batch.memo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field

from onebit.config import Float, register_section, section

if TYPE_CHECKING:
    from onebit.config import Config
    from onebit.train.distill import DistillConfig
    from onebit.train.techniques import Distillation


@section
class LossConfig:
    """The task loss: cross-entropy, optionally with label smoothing."""

    label_smoothing: Float = Field(0.0, ge=0.0, le=1.0)


register_section("loss", LossConfig, position=60)


@dataclass
class Batch:
    """What a loss term may read: the inputs, the targets and the model's output;
    ``memo`` holds values computed once per batch and shared by terms (the teacher's)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    memo: dict[str, Any] = field(default_factory=dict)


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


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al.'s distillation term, mean over the batch:

        T^2 * KL(softmax(t / T) || softmax(s / T)) = T^2 * sum_c p_t (log p_t - log p_s)

    Source: Hinton et al. 2015; the seed-002 Distiller and Real-to-Binary's output matching.
    """
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    return t * t * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def distributional(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """ReActNet's distributional loss, mean over the batch (T = 1 in ReActNet):

        T^2 * -sum_c softmax(t / T)_c * log_softmax(s / T)_c

    (the cross-entropy against the teacher's distribution: KL plus the teacher's entropy,
    which has no gradient). Source: Liu et al. 2020 (ReActNet), ``utils/KD_loss.py``.
    """
    t = temperature
    p_t = F.softmax(teacher.float() / t, dim=1)
    return -t * t * (p_t * F.log_softmax(student.float() / t, dim=1)).sum(dim=1).mean()


KD_LOSSES = {"kl": kd_kl, "distributional": distributional}


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Real-to-Binary's normalised attention map of (N, C, H, W) features: Q = mean over
    channels of A^2, flattened to (N, H W) and divided by its maximum per sample."""
    q = features.float().pow(2).mean(dim=1).flatten(1)
    return q / q.amax(dim=1, keepdim=True)


def attention_transfer(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the compared block outputs of mean((Q_s - Q_t)^2) (:func:`attention_map`).

    Source: Martinez et al. 2020 (Real-to-Binary), larq/zoo ``multi_stage_training``;
    seed-002 ``ATKDImageClassifier``.
    """
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student but {len(teacher)} teacher feature maps")
    losses = [
        (attention_map(s) - attention_map(t)).pow(2).mean()
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(losses).mean()


def build_loss_terms(config: Config) -> list[LossTerm]:
    """The task loss of a config: cross-entropy (weight 1, ``loss.label_smoothing``). The
    phase's techniques add their terms to it (distillation: :func:`distillation_terms`)."""
    ce = partial(cross_entropy, label_smoothing=config.loss.label_smoothing)
    return [LossTerm("ce", 1.0, ce)]


def distillation_terms(
    terms: list[LossTerm], d: DistillConfig, distiller: Distillation
) -> list[LossTerm]:
    """``terms`` with distillation: the cross-entropy ("ce") weighted ``ce_weight`` (null:
    1 - alpha for ``kl``, 0 for ``distributional``), then alpha * the KD term of the
    teacher's logits (+ attention weight * attention transfer). Terms of weight 0 are left
    out (the first is kept if all are)."""
    ce_weight = d.ce_weight
    if ce_weight is None:
        ce_weight = 1.0 - d.alpha if d.loss == "kl" else 0.0
    kd = KD_LOSSES[d.loss]
    terms = [replace(t, weight=ce_weight) if t.name == "ce" else t for t in terms]
    terms.append(
        LossTerm(
            d.loss, d.alpha, lambda b: kd(b.logits, distiller.teacher(b).logits, d.temperature)
        )
    )
    if d.attention is not None:
        terms.append(LossTerm("attention", d.attention.weight, distiller.attention_loss))
    return [t for t in terms if t.weight > 0] or terms[:1]


def total_loss(terms: list[LossTerm], batch: Batch) -> torch.Tensor:
    """sum_i w_i * term_i(batch)."""
    loss = terms[0].weight * terms[0].fn(batch)
    for term in terms[1:]:
        loss = loss + term.weight * term.fn(batch)
    return loss
