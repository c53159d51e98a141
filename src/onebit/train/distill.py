"""Knowledge distillation: a frozen teacher run beside the student, and what the loss terms
read from it (its logits; block outputs for attention transfer).

The teacher is any registry model with trained weights (``distill.teacher``): in eval mode
(``bn_mode: train``: its BatchNorm layers normalise with batch statistics), without gradients,
on the student's device and under the same autocast. It is not a submodule of the student,
so it is in no checkpoint and no optimizer. Block outputs for attention transfer are recorded
by forward hooks on the modules named by ``distill.attention.layers`` (shell patterns over
``named_modules()`` names).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from onebit.config import DistillConfig, TeacherConfig, with_seed
from onebit.errors import ConfigError, TrainingError
from onebit.models import create_model, model_entry
from onebit.train.bn import batchnorms
from onebit.train.checkpoint import checkpoint_path, load_model, load_model_tensors, read_checkpoint
from onebit.train.losses import Batch, attention_transfer


@dataclass
class TeacherOutput:
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


def _modules(model: nn.Module, patterns: list[str], whose: str) -> list[nn.Module]:
    found = [
        m for name, m in model.named_modules() if any(fnmatch.fnmatch(name, p) for p in patterns)
    ]
    if not found:
        raise ConfigError(
            f"config key distill.attention: no {whose} module matches {patterns}; "
            "name modules as in model.named_modules(), e.g. layer*.*"
        )
    return found


class Distiller:
    """The teacher of one phase and the hooks attention transfer needs; :meth:`close`
    removes the hooks from the student."""

    def __init__(
        self,
        cfg: DistillConfig,
        student: nn.Module,
        defaults: dict[str, object],
        seed: int,
        device: torch.device,
    ):
        self.cfg = cfg
        self.teacher_model = load_teacher(cfg.teacher, defaults, seed, device)
        self._student_features: list[torch.Tensor] = []
        self._teacher_features: list[torch.Tensor] = []
        self._handles = []
        attention = cfg.attention
        if attention is not None and attention.weight > 0:
            teacher_layers = attention.teacher_layers or attention.layers
            student_modules = _modules(student, attention.layers, "student")
            teacher_modules = _modules(self.teacher_model, teacher_layers, "teacher")
            if len(student_modules) != len(teacher_modules):
                raise ConfigError(
                    f"config key distill.attention: {len(student_modules)} student modules "
                    f"match {attention.layers} but {len(teacher_modules)} teacher modules "
                    f"match {teacher_layers}; compare as many of each"
                )
            for m in student_modules:
                self._handles.append(m.register_forward_hook(self._record_student))
            for m in teacher_modules:
                self._handles.append(m.register_forward_hook(self._record_teacher))

    def _record_student(self, module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if module.training:  # evaluation passes record nothing
            self._student_features.append(output)

    def _record_teacher(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._teacher_features.append(output)

    def teacher(self, batch: Batch) -> TeacherOutput:
        """The teacher's output on ``batch.inputs``, computed once per batch."""
        if "teacher" not in batch.memo:
            self._teacher_features.clear()
            with torch.no_grad():
                logits = self.teacher_model(batch.inputs)
            batch.memo["teacher"] = TeacherOutput(logits, list(self._teacher_features))
            self._teacher_features.clear()
        return batch.memo["teacher"]

    def attention_loss(self, batch: Batch) -> torch.Tensor:
        """Attention transfer between the student's recorded block outputs of this batch
        and the teacher's."""
        student, self._student_features = self._student_features, []
        teacher = self.teacher(batch).features
        if len(student) != len(teacher):
            raise TrainingError(
                f"attention transfer recorded {len(student)} student and {len(teacher)} "
                "teacher block outputs in one step; each module must run once per forward"
            )
        return attention_transfer(student, teacher)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
