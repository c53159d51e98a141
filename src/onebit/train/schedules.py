"""Schedules the trainer applies: the learning rate (every step) and the binarizers' state
(every epoch). Pure functions of (epoch, step), so a resumed run sees the same values."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

import torch.nn as nn
from pydantic import Field

from onebit.config import Float, Int, kinds, register_section, section
from onebit.quant import set_schedule_state

if TYPE_CHECKING:
    from onebit.quant.registry import QuantConfig


@section
class ScheduleConfig:
    """Length of training and the learning-rate schedule (applied every step)."""

    KIND: ClassVar[str] = "lr"
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {"step": ("milestones", "gamma")}
    epochs: Int = Field(1, ge=1)
    lr: Literal["cos", "step", "linear", "const"] = "cos"
    warmup_epochs: Float = Field(0.0, ge=0.0)
    warmup_steps: Int = Field(0, ge=0)
    warmup_from: Float = Field(0.0, ge=0.0, le=1.0)
    milestones: list[Float] = Field(default_factory=list)
    gamma: Float = Field(0.1, ge=0.0)
    # A phase that trains part of a longer schedule: it starts at epoch `offset` of a
    # schedule of `total_epochs` (null: offset + epochs) epochs.
    offset: Int = Field(0, ge=0)
    total_epochs: Int | None = Field(None, ge=1)

    @property
    def length(self) -> int:
        """E, the length of the schedule this phase trains a part of."""
        return self.total_epochs or self.offset + self.epochs


register_section("schedule", kinds(ScheduleConfig), position=40)


def lr_factor(
    kind: str,
    epoch: float,
    epochs: int,
    warmup_epochs: float = 0.0,
    milestones: tuple[float, ...] | list[float] = (),
    gamma: float = 0.1,
    step_epochs: float = 0.0,
    warmup_from: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at (fractional) ``epoch`` e of E.

    Warm-up (e < W): linear from r = ``warmup_from`` to 1, r + (1 - r) (e + s) / W with
    s = ``step_epochs`` the length of one step, so the first step is already above r and the
    last warm-up step reaches 1: mmcv's linear warm-up with ``warmup_ratio`` r, one step
    ahead (IR-Net's 0.2 -> 0.8 is r = 0.25).
    After it, with p = (e - W) / (E - W):
    ``cos``: (1 + cos(pi p)) / 2 (CosineAnnealingLR to 0, IR-Net / ReCU, here per step);
    ``linear``: 1 - p (Bi-Real, ReActNet); ``step``: gamma^(number of milestones <= e)
    (MultiStepLR); ``const``: 1.
    """
    if epoch < warmup_epochs:
        return min(warmup_from + (1 - warmup_from) * (epoch + step_epochs) / warmup_epochs, 1.0)
    p = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    if kind == "cos":
        return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    if kind == "linear":
        return max(1.0 - p, 0.0)
    if kind == "step":
        return gamma ** sum(1 for m in milestones if m <= epoch)
    return 1.0


def lr_at(schedule: ScheduleConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier for ``step`` (0-based, within ``epoch``) of a config's
    schedule, at the fractional epoch e = offset + epoch + step / steps_per_epoch of a
    schedule of E = ``schedule.length`` epochs. The warm-up lasts
    ``warmup_epochs + warmup_steps / steps_per_epoch`` epochs (the official IR-Net and mmcls
    recipes count it in iterations)."""
    return lr_factor(
        schedule.lr,
        schedule.offset + epoch + step / steps_per_epoch,
        schedule.length,
        schedule.warmup_epochs + schedule.warmup_steps / steps_per_epoch,
        schedule.milestones,
        schedule.gamma,
        step_epochs=1 / steps_per_epoch,
        warmup_from=schedule.warmup_from,
    )


def apply_quant_schedule(
    model: nn.Module, quant: QuantConfig, epoch: int, epochs: int
) -> dict[str, float]:
    """Set the state of every binarizer of ``model`` for ``epoch`` from the config's ``quant``
    section (once per epoch, as the official codes do); returns the values the
    binarizers log, for the metrics (see :func:`onebit.quant.set_schedule_state`)."""
    return set_schedule_state(model, epoch, epochs, quant)
