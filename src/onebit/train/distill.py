"""Knowledge distillation's teacher: a frozen model run beside the student, and what the loss
terms read from it (its logits; block outputs for attention transfer).

The teacher is any registry model with trained weights (``distill.teacher``): in eval mode
(``bn_mode: train``: its BatchNorm layers normalise with batch statistics), without gradients,
on the student's device and under the same autocast. It is not a submodule of the student,
so it is in no checkpoint and no optimizer. The technique that runs it, and records block
outputs for attention transfer by forward hooks on the modules named by
``distill.attention.layers`` (shell patterns over ``named_modules()`` names), is
:class:`onebit.train.techniques.Distillation`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from onebit.config import Float, Str, register_section, section, with_seed
from onebit.errors import ConfigError
from onebit.models import check_model_spec, create_model, model_entry
from onebit.train.bn import batchnorms
from onebit.train.checkpoint import checkpoint_path, load_model, load_model_tensors, read_checkpoint


@section
class TeacherConfig:
    """The frozen teacher: a registry model (name + options) and its trained weights.
    ``bn_mode``: ``eval`` normalises with the teacher's stored BatchNorm statistics; ``train``
    with each batch's own (what BNEW's ``dist_main.py`` and the mmcls distiller do: they
    never call ``.eval()`` on the teacher). Its weights and statistics never change."""

    model: dict[str, Any]
    checkpoint: Str | None = None
    bn_mode: Literal["eval", "train"] = "eval"


@section
class AttentionConfig:
    """Real-to-Binary's attention transfer between block outputs picked by module name."""

    weight: Float = Field(0.0, ge=0.0)
    layers: list[Str] = Field(default_factory=list)  # student module names (shell patterns)
    teacher_layers: list[Str] | None = None  # null: the same names in the teacher


@section
class DistillConfig:
    """Knowledge distillation from a frozen teacher (formulas in onebit.train.losses)."""

    teacher: TeacherConfig
    loss: Literal["kl", "distributional"] = "kl"
    temperature: Float = Field(1.0, ge=1e-6)
    alpha: Float = Field(1.0, ge=0.0)  # weight of the distillation term
    ce_weight: Float | None = Field(None, ge=0.0)  # null: 1 - alpha (kl), 0 (distributional)
    attention: AttentionConfig | None = None


def _check_distill(distill: DistillConfig | None) -> None:
    if distill is None:
        return
    check_model_spec(distill.teacher.model, "distill.teacher.model")
    if not distill.teacher.checkpoint:
        raise ConfigError(
            "config key distill.teacher.checkpoint is missing: give the teacher's run "
            "directory or .safetensors file"
        )
    attention = distill.attention
    if attention is not None and attention.weight > 0 and not attention.layers:
        raise ConfigError(
            "config key distill.attention.layers is empty: name the student modules "
            "whose outputs are compared (shell patterns, e.g. layer*.*)"
        )


register_section("distill", DistillConfig | None, position=90, default=None, check=_check_distill)


@dataclass
class TeacherOutput:
    """What the teacher computed on one batch: its logits and the recorded block outputs."""

    logits: torch.Tensor
    features: list[torch.Tensor]


def load_teacher(
    teacher: TeacherConfig, defaults: dict[str, object], seed: int, device: torch.device
) -> nn.Module:
    """The teacher model with its weights, frozen, on ``device``: in eval mode, but for its
    BatchNorm layers with ``teacher.bn_mode == "train"`` (batch statistics, momentum 0 so
    that the stored statistics stay as trained).

    ``teacher.checkpoint`` (``{seed}`` replaced by ``seed``) is a onebit run directory or
    checkpoint (the model is rebuilt from the config stored with it, which must agree with
    ``teacher.model``), or a ``.safetensors`` file holding a plain state dict (e.g. converted
    torchvision weights) for ``create_model(**teacher.model)``. ``defaults`` fill options
    ``teacher.model`` leaves out and its builder takes (num_classes, in_chans, input_hw of the
    data), as for the student.
    """
    path = Path(with_seed(teacher.checkpoint, seed))
    file = checkpoint_path(path)
    tensors, _ = read_checkpoint(file)
    if any(k.startswith("model.") for k in tensors):
        model, config = load_model(file)
        for key, value in teacher.model.items():
            saved = config.model.get(key)
            if saved != value:
                raise ConfigError(
                    f"config key distill.teacher.model.{key}: {value!r}, but the teacher "
                    f"checkpoint {file} was trained with {saved!r}"
                )
    else:
        accepted = model_entry(teacher.model["name"]).defaults
        options = {**{k: v for k, v in defaults.items() if k in accepted}, **teacher.model}
        model = create_model(**options)
        load_model_tensors(model, {f"model.{k}": v for k, v in tensors.items()}, file)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if teacher.bn_mode == "train":
        for bn in batchnorms(model):
            bn.train()
            bn.momentum = 0.0  # normalise with the batch's statistics, store nothing
    return model


def matching_modules(model: nn.Module, patterns: list[str], whose: str) -> list[nn.Module]:
    """The modules of ``model`` whose ``named_modules()`` name matches one of ``patterns``
    (shell patterns); a ConfigError naming ``whose`` modules if none does."""
    found = [
        m for name, m in model.named_modules() if any(fnmatch.fnmatch(name, p) for p in patterns)
    ]
    if not found:
        raise ConfigError(
            f"config key distill.attention: no {whose} module matches {patterns}; "
            "name modules as in model.named_modules(), e.g. layer*.*"
        )
    return found
