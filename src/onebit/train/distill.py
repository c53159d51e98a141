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

import torch
import torch.nn as nn

from onebit.config import TeacherConfig, with_seed
from onebit.errors import ConfigError
from onebit.models import create_model, model_entry
from onebit.train.bn import batchnorms
from onebit.train.checkpoint import checkpoint_path, load_model, load_model_tensors, read_checkpoint


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
