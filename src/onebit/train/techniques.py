"""Training techniques: one class each, with the config key it reads and the hooks it needs.

A technique is what a recipe adds to the plain loop (forward, loss, backward, optimizer
step, evaluation): distillation, the BNEW proximal step, clamping or freezing the latent
weights, BatchNorm re-estimation, Bop / BMD for the binary weights. Each is a
:class:`Technique` subclass registered with :func:`register_technique`. It names the config
key it reads (``section``); every phase whose config activates it gets a fresh instance,
whose hooks the trainer calls in registration order (the built-ins below first, in the
order they are defined). The trainer names no technique.

    phase start   start -> optimizers -> loss_terms
    each epoch    epoch_start -> the steps -> before_eval -> evaluation -> checkpoint
    each step     forward, loss, backward -> before_step -> optimizer steps -> after_step
    checkpoint    state_dict (saved with last.safetensors), load_state_dict (on resume)
    phase end     end (also when the run ends)

A technique of your own reads ``techniques.<name>`` of the config, checked against its
``schema`` dataclass (docs/extending.md, "A new training technique").
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
import torch.nn as nn

from onebit.config import read_options, read_value, register_section
from onebit.errors import ConfigError, TrainingError, did_you_mean
from onebit.nn import is_binary
from onebit.train import distributed
from onebit.train.bn import recalibrate_bn
from onebit.train.distill import TeacherOutput, load_teacher, matching_modules
from onebit.train.losses import Batch, LossTerm, attention_transfer, distillation_terms
from onebit.train.optim import BMD, bmd_beta, build_binary_optimizer
from onebit.train.regularizers import (
    binary_weights,
    bnew_prox_,
    bnew_reg,
    center_,
    clamp_,
    freeze_binary_,
)

if TYPE_CHECKING:
    from onebit.config import Config
    from onebit.train.trainer import Trainer


class Technique:
    """One training technique. Subclass it, set ``name`` and ``section`` (or ``schema``),
    override the hooks it needs, and register it with :func:`register_technique`.

    ``options`` is the value of the config key ``section`` in the phase's config; a
    technique without a ``section`` reads ``techniques.<name>``, an instance of ``schema``.
    Hooks get the :class:`~onebit.train.Trainer`: ``trainer.model``, ``trainer.phase_config``,
    ``trainer.loaders``, ``trainer.device``, ``trainer.amp_dtype``, ``trainer.optimizers``
    (from the ``optimizers`` hook on), ``trainer.progress``.
    """

    name: ClassVar[str] = ""
    section: ClassVar[str | None] = None  # the config key it reads; None: techniques.<name>
    schema: ClassVar[type | None] = None  # the dataclass a techniques.<name> entry is read into
    # set by ``start`` when the phase's first step compiles something of the technique's (the
    # trainer then times that step apart, as ``compile_seconds``)
    compiles: bool = False

    def __init__(self, options: Any):
        self.options = options

    @classmethod
    def active(cls, options: Any) -> bool:
        """Whether a phase whose ``section`` holds ``options`` uses the technique: by default
        when it is set (not null, false or 0)."""
        return bool(options)

    def start(self, trainer: Trainer) -> None:
        """Phase start, after the model is built (weights carried over) and its parameters
        made trainable as ``optim.train`` says, before the optimizers: freeze parameters,
        load a teacher, register forward hooks."""

    def optimizers(self, trainer: Trainer) -> list[torch.optim.Optimizer] | None:
        """Optimizers of parameters the technique trains itself (Bop, BMD); the phase's
        ``optim.name`` optimizer gets every other trainable parameter. The learning-rate
        schedule scales every group's ``lr`` (its ``base_lr``) in all of them. None: none."""
        return []

    def loss_terms(self, trainer: Trainer, terms: list[LossTerm]) -> list[LossTerm] | None:
        """The phase's loss terms with this technique's: add terms, or reweight earlier ones
        (the loss is sum_i weight_i * term_i(batch), cross-entropy first). None: ``terms``
        as they are (also when the hook changed the list in place)."""
        return terms

    def epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, float] | None:
        """Before epoch ``epoch`` (0-based, of the phase) trains; the values returned go into
        the epoch's metrics record (e.g. ``{"bnew_reg": 0.007}``; None: no values)."""
        return {}

    def before_step(self, trainer: Trainer) -> None:
        """After the backward pass, before the optimizers step (the gradients are set)."""

    def after_step(self, trainer: Trainer) -> None:
        """After the optimizers stepped."""

    def before_eval(self, trainer: Trainer, epoch: int) -> dict[str, float] | None:
        """After epoch ``epoch`` trained, before the model is evaluated and checkpointed;
        the values returned go into the epoch's metrics record (None: no values)."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """What the technique needs to resume exactly, besides the model's and the
        optimizers' tensors: JSON values (numbers, strings, lists, mappings), written with
        every last checkpoint. Empty or None: nothing is saved, nor given back on resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s values, when a run resumes (after ``optimizers``)."""

    def end(self, trainer: Trainer) -> None:
        """Phase end (and the end of the run): remove hooks, release what it holds."""


TECHNIQUES: dict[str, type[Technique]] = {}

T = TypeVar("T", bound=type[Technique])


def register_technique(cls: T) -> T:
    """Register a :class:`Technique` subclass under its ``name`` (a class decorator). Its
    hooks run after those of every technique registered before it.

    A technique without a ``section`` reads ``techniques.<name>`` of the config: its
    ``schema`` dataclass says which keys that entry has (types, defaults, and field metadata
    ``min``/``max``/``choices`` checked as every config key is).
    """
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise TypeError(f"register_technique takes a Technique subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise TypeError(f"{cls.__qualname__}: set the class attribute name, e.g. 'weight_noise'")
    known = TECHNIQUES.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(
            f"{cls.__qualname__}: technique name {cls.name!r} is taken by {known.__qualname__}"
        )
    if cls.section is None and not (
        isinstance(cls.schema, type) and dataclasses.is_dataclass(cls.schema)
    ):
        raise TypeError(
            f"{cls.__qualname__} reads techniques.{cls.name}: give it a schema dataclass "
            "(or a section, the config key it reads)"
        )
    TECHNIQUES[cls.name] = cls
    return cls


def _technique_options(entries: Any, path: str) -> dict[str, Any]:
    """The ``techniques:`` section: every entry read into the ``schema`` dataclass of the
    registered technique of its name (null or false: left off, read as null)."""
    entries = read_value(dict[str, Any], entries, path)
    schemas = {name: cls.schema for name, cls in TECHNIQUES.items() if cls.section is None}
    options = {}
    for name, value in entries.items():
        if name not in schemas:
            hint = did_you_mean(name, schemas, prefix=f"{path}.")
            raise ConfigError(
                f"config key {path}.{name} is unknown.{hint} Registered techniques with "
                f"options there: {', '.join(schemas) or 'none'} (register one with "
                "onebit.register_technique before the config is read)"
            )
        off = value is None or value is False
        options[name] = None if off else read_options(schemas[name], value, f"{path}.{name}")
    return options


# {name: options} of techniques that read techniques.<name> (register_technique)
register_section("techniques", read=_technique_options, position=100)


def section_value(config: Config, section: str) -> Any:
    """The value at the dotted config key ``section`` (``"latent.bnew"``)."""
    value: Any = config
    for key in section.split("."):
        value = value.get(key) if isinstance(value, dict) else getattr(value, key)
    return value


def phase_techniques(config: Config) -> list[Technique]:
    """A fresh instance of every registered technique ``config`` (a phase's) activates."""
    found = []
    for cls in TECHNIQUES.values():
        options = section_value(config, cls.section or f"techniques.{cls.name}")
        if cls.active(options):
            found.append(cls(options))
    return found


def _latent(model: nn.Module) -> list[nn.Parameter]:
    """The binary layers' latent weights that train in this phase."""
    return [w for _, w in binary_weights(model) if w.requires_grad]


# --------------------------------------------------------------------------- the built-ins
# In this order: freezing comes first, so that center, clamp, BNEW and Bop / BMD see which
# latent weights still train; center acts before clamp, clamp before the BNEW step.


@register_technique
class LatentFreeze(Technique):
    """``latent.freeze``: at the phase start every binary layer's latent weight becomes its
    binarized value and stops training (:func:`~onebit.train.regularizers.freeze_binary_`)."""

    name, section = "latent_freeze", "latent.freeze"

    def start(self, trainer: Trainer) -> None:
        freeze_binary_(trainer.model)


class _LatentStep(Technique):
    """A step on the trainable latent weights after every optimizer step, or with
    ``latent.order: before_step`` between the backward pass and the optimizer step."""

    def start(self, trainer: Trainer) -> None:
        self.weights = _latent(trainer.model)
        self.before = trainer.phase_config.latent.order == "before_step"

    def apply(self) -> None:
        raise NotImplementedError

    def before_step(self, trainer: Trainer) -> None:
        if self.before and self.weights:
            self.apply()

    def after_step(self, trainer: Trainer) -> None:
        if not self.before and self.weights:
            self.apply()


@register_technique
class LatentCenter(_LatentStep):
    """``latent.center``: w <- w - mean(w over input channels) after every step, before
    ``latent.clamp`` (XNOR-Net centres, then clamps, before every forward; here the first
    forward sees the initial weights, so that a resumed run repeats an uninterrupted one)."""

    name, section = "latent_center", "latent.center"

    def apply(self) -> None:
        center_(self.weights)


@register_technique
class LatentClamp(_LatentStep):
    """``latent.clamp``: w <- clamp(w, -1, 1) (BNEW phase 1, the STE baseline)."""

    name, section = "latent_clamp", "latent.clamp"

    def apply(self) -> None:
        clamp_(self.weights)


@register_technique
class BnewProx(_LatentStep):
    """``latent.bnew``: BNEW's proximal step w <- clamp((1 + 2 reg) w, -1, 1) with
    reg = min(reg0 (e + 1) / E, 1) in epoch e = offset + epoch of the ramp's E
    (:mod:`onebit.train.regularizers`); logs ``bnew_reg``."""

    name, section = "bnew", "latent.bnew"

    def start(self, trainer: Trainer) -> None:
        super().start(trainer)
        schedule = trainer.phase_config.schedule
        self.epochs, self.offset = self.options.epochs or schedule.length, schedule.offset
        self.reg = bnew_reg(self.offset, self.epochs, self.options.reg)

    def epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        if not self.weights:
            return {}
        self.reg = bnew_reg(self.offset + epoch, self.epochs, self.options.reg)
        return {"bnew_reg": self.reg}

    def apply(self) -> None:
        bnew_prox_(self.weights, self.reg)


@register_technique
class BinaryOptimizer(Technique):
    """``optim.binary``: the trainable latent weights get Bop or BMD, every other parameter
    ``optim.name``; BMD's beta = min(beta_growth^epoch, beta_max) is set before every
    epoch and logged as ``bmd_beta`` (:mod:`onebit.train.optim`)."""

    name, section = "binary_optimizer", "optim.binary"

    def optimizers(self, trainer: Trainer) -> list[torch.optim.Optimizer]:
        latent = _latent(trainer.model)
        optim = trainer.phase_config.optim
        self.optimizer = build_binary_optimizer(latent, optim) if latent else None
        return [self.optimizer] if self.optimizer else []

    def epoch_start(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        if not isinstance(self.optimizer, BMD):
            return {}
        beta = bmd_beta(epoch, self.options.beta_growth, self.options.beta_max)
        self.optimizer.set_beta(beta)
        return {"bmd_beta": beta}


@register_technique
class Distillation(Technique):
    """``distill``: a frozen teacher (:func:`~onebit.train.distill.load_teacher`) beside the
    student; the loss becomes ce_weight * CE + alpha * KD term (+ attention weight *
    attention transfer), :func:`~onebit.train.losses.distillation_terms`. Attention transfer
    records block outputs with forward hooks on the modules ``distill.attention.layers``
    names (shell patterns over ``named_modules()`` names); :meth:`end` removes them."""

    name, section = "distill", "distill"

    def start(self, trainer: Trainer) -> None:
        cfg = self.options
        self.teacher_model = load_teacher(
            cfg.teacher, trainer.data_options, trainer.phase_config.runtime.seed, trainer.device
        )
        self._student_features: list[torch.Tensor] = []
        self._teacher_features: list[torch.Tensor] = []
        self._handles = []
        attention = cfg.attention
        hooks = attention is not None and attention.weight > 0
        self.compiles = self._compile_teacher(trainer, hooks)
        self.teacher_forward = self.teacher_model
        if self.compiles:
            trainer._keep_compile_cache()
            self.teacher_forward = torch.compile(self.teacher_model)
        if hooks:
            teacher_layers = attention.teacher_layers or attention.layers
            student_modules = matching_modules(trainer.model, attention.layers, "student")
            teacher_modules = matching_modules(self.teacher_model, teacher_layers, "teacher")
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

    def _compile_teacher(self, trainer: Trainer, hooks: bool) -> bool:
        """``runtime.compile_teacher``; ``auto``: when the student is compiled, for a teacher
        without binary layers (their fused CPU kernels beat compiled code) or attention hooks."""
        setting = trainer.phase_config.runtime.compile_teacher
        if setting != "auto":
            return setting
        binary = any(is_binary(m) for m in self.teacher_model.modules())
        return trainer._should_compile() and not binary and not hooks

    def _record_student(self, module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if module.training:  # evaluation passes record nothing
            self._student_features.append(output)

    def _record_teacher(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._teacher_features.append(output)

    def loss_terms(self, trainer: Trainer, terms: list[LossTerm]) -> list[LossTerm]:
        return distillation_terms(terms, self.options, self)

    def teacher(self, batch: Batch) -> TeacherOutput:
        """The teacher's output on ``batch.inputs``, computed once per batch."""
        if "teacher" not in batch.memo:
            self._teacher_features.clear()
            with torch.no_grad():
                logits = self.teacher_forward(batch.inputs)
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

    def end(self, trainer: Trainer) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.teacher_model = self.teacher_forward = None


@register_technique
class BnRecalibration(Technique):
    """``eval.bn_recalibrate``: before every evaluation, re-estimate the BatchNorm running
    statistics from that many batches of the epoch's training order (``eval.bn_augment``:
    with the training augmentation; process 0's in a multi-process run),
    :func:`~onebit.train.bn.recalibrate_bn`. The record keeps the stored statistics' test
    figures as ``val_loss_stored``, ``val_top1_stored``, ``val_top5_stored``: they show what
    recalibrating changed (docs/training.md, "BatchNorm statistics")."""

    name, section = "bn_recalibrate", "eval.bn_recalibrate"

    def before_eval(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        stored = trainer.evaluate_on("test")
        augment = trainer.phase_config.eval.bn_augment
        batches = trainer.loaders.train.batches(epoch, augment=augment)
        recalibrate_bn(trainer.model, batches, self.options, trainer.amp_dtype)
        distributed.sync_buffers(trainer.model)
        return {f"{k}_stored": v for k, v in stored.items()}
