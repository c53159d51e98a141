"""Training configs: one YAML file per recipe, read into typed pydantic dataclasses.

    config = load_config("configs/fmnist/resnet20_recu.yaml", ["optim.lr=0.05"])
    config.optim.lr, config.model["name"], config.to_dict()

Every key is checked by pydantic against the dataclasses below: an unknown key, a wrong type
or a value out of range is a :class:`~onebit.errors.ConfigError` naming the key path
(``optim.lr``), one line. A section whose options depend on one of its keys (``optim.name``,
``optim.binary.name``, ``schedule.lr``, ``data.dataset``) is a discriminated union of one
class per kind, each accepting its own options only. The ``model`` section is ``name`` plus
any options of that model's builder (see ``onebit models``); it is passed to
``create_model(**config.model)``. The schema with every key is in docs/training.md.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import reprlib
import types
import typing
from collections.abc import Collection, Hashable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Union

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from onebit.errors import ConfigError, OneBitError
from onebit.quant.registry import QuantConfig
from onebit.user_code import import_modules

_SECTION = ConfigDict(extra="forbid")


def _number(value: Any) -> Any:
    # YAML 1.1 reads "1e-4" (no dot) as a string; accept any text float() reads.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


# The value types of config keys: no coercion between them (true is no integer, 1 no string),
# except that an integer or a numeric text is a number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(_number)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _kind_option(default: Any) -> AfterValidator:
    """An option of another kind: accepted at its default only (a resolved config lists every
    key of its section), otherwise a ``foreign_option`` error."""

    def check(value: Any) -> Any:
        if value != default:
            raise PydanticCustomError("foreign_option", "not an option of this kind")
        return value

    return AfterValidator(check)


def _kinds(base: type) -> Any:
    """The discriminated union of the kinds of section ``base``: per kind a subclass that takes
    the options of every kind and its own (``base.OWN``); the other kinds' options keep their
    defaults. The kinds are the values of ``base.KIND`` (a Literal), or with a ``kind_of``
    (which maps those values to kinds) the keys of ``OWN``."""
    fields = base.__pydantic_fields__
    literal = not hasattr(base, "kind_of")
    members = []
    for tag in typing.get_args(fields[base.KIND].annotation) if literal else base.OWN:
        own = _own_options(base, tag)
        annotations: dict[str, Any] = {base.KIND: Literal[tag]} if literal else {}
        namespace: dict[str, Any] = {"__module__": base.__module__, "TAG": tag}
        if literal:
            namespace[base.KIND] = tag
        for name, info in fields.items():
            if name not in own:
                default = info.get_default(call_default_factory=True)
                annotations[name] = Annotated[
                    (info.annotation, *info.metadata, _kind_option(default))
                ]
                namespace[name] = Field(default=info.default, default_factory=info.default_factory)
        namespace["__annotations__"] = annotations
        namespace["__qualname__"] = f"{base.__name__}_{tag}"
        kind = dataclass(type(namespace["__qualname__"], (base,), namespace), config=_SECTION)
        members.append(Annotated[kind, Tag(tag)])
    default = fields[base.KIND].get_default()

    def discriminate(value: Any) -> Any:
        if isinstance(value, dict):
            chosen = value.get(base.KIND, default)
        elif isinstance(value, base):
            chosen = getattr(value, base.KIND)
        else:
            chosen = default  # the default kind's error: expected a mapping
        return _tag_of(base, chosen) if isinstance(chosen, Hashable) else None

    return Annotated[Union[tuple(members)], Discriminator(discriminate)]  # noqa: UP007


def _tag_of(base: type, chosen: Any) -> Any:
    kind_of = getattr(base, "kind_of", None)
    return kind_of(chosen) if kind_of else chosen


def _own_options(base: type, tag: str) -> list[str]:
    """The options of ``base``'s kind ``tag``: those of every kind and its own."""
    theirs = {name for kind, names in base.OWN.items() if kind != tag for name in names}
    return [n for n in base.__pydantic_fields__ if n not in theirs or n in base.OWN.get(tag, ())]


@dataclass(config=_SECTION)
class DataConfig:
    """Which dataset, where it is, batch sizes, training augmentation, the validation split
    held out of the training images and the normalisation."""

    KIND: ClassVar[str] = "dataset"  # image folders and in-memory datasets have own options
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "in_memory": ("subset", "eval_subset", "val_split", "val_split_seed"),
        "imagefolder": ("image_size", "workers", "crop_scale", "color_jitter"),
    }
    dataset: Str = "cifar10"
    root: Str | None = None
    batch_size: Int = Field(128, ge=1)
    eval_batch_size: Int = Field(128, ge=1)
    augment: Literal["crop_flip", "crop", "flip", "none"] = "crop_flip"
    # the in-memory datasets only (an image folder has its own val/)
    subset: Int | None = Field(None, ge=1)
    eval_subset: Int | None = Field(None, ge=1)
    checksum: Bool = True
    # image folders only
    image_size: Int = Field(224, ge=8)
    workers: Int = Field(8, ge=0)
    crop_scale: list[Float] = Field(default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2)
    color_jitter: list[Float] | None = Field(None, min_length=4, max_length=4)
    # Held out of the training images as the validation split: a count, or a fraction of them;
    # which ones depends on val_split_seed alone (the split is part of the recipe, not the seed).
    val_split: Int | Float | None = None
    val_split_seed: Int = Field(0, ge=0)
    # Normalisation per channel; null: the dataset's own statistics.
    mean: list[Float] | None = None
    std: list[Float] | None = None

    @staticmethod
    def kind_of(dataset: Any) -> str:
        return "imagefolder" if dataset == "imagefolder" else "in_memory"


@dataclass(config=_SECTION)
class BinaryOptimConfig:
    """A second optimizer for the binary layers' latent weights (Bop, BMD); every other
    parameter keeps ``optim.name``. Formulas in :mod:`onebit.train.optim`."""

    KIND: ClassVar[str] = "name"
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "bop": ("gamma", "threshold"),
        "bmd": ("lr", "beta_growth", "beta_max", "form"),
    }
    name: Literal["bop", "bmd"] = "bop"
    gamma: Float = Field(1e-4, ge=0.0)  # Bop adaptivity rate; follows the lr
    threshold: Float = Field(1e-8, ge=0.0)  # Bop flip threshold
    lr: Float | None = Field(None, ge=0.0)  # BMD Adam step; null: optim.lr
    beta_growth: Float = Field(1.01, ge=1.0)  # BMD: beta = beta_growth ** e
    beta_max: Float = Field(1e35, ge=1.0)
    form: Literal["dual", "primal"] = "dual"  # MD-tanh-S / MD-tanh


BinaryOptimizers = _kinds(BinaryOptimConfig)


@dataclass(config=_SECTION)
class OptimConfig:
    """The optimizer(s) of the trainable parameters."""

    KIND: ClassVar[str] = "name"
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "sgd": ("momentum", "nesterov"),
        "adam": ("betas",),
        "adamw": ("betas",),
    }
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Float = Field(0.1, ge=0.0, le=1e4)
    momentum: Float = Field(0.9, ge=0.0)
    weight_decay: Float = Field(1e-4, ge=0.0)
    nesterov: Bool = False
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    decay: Literal["all", "conv", "no_norm"] = "all"  # which get weight decay
    # or: shell patterns over parameter names; only the matching ones get weight decay
    decay_filter: list[Str] | None = None
    train: Literal["all", "batchnorm"] = "all"  # which parameters train
    binary: BinaryOptimizers | None = None


@dataclass(config=_SECTION)
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


DataKinds = _kinds(DataConfig)
Schedules = _kinds(ScheduleConfig)

Optimizers = _kinds(OptimConfig)


@dataclass(config=_SECTION)
class LossConfig:
    """The task loss: cross-entropy, optionally with label smoothing."""

    label_smoothing: Float = Field(0.0, ge=0.0, le=1.0)


@dataclass(config=_SECTION)
class EvalConfig:
    """How the model is evaluated (and checkpointed): BatchNorm running statistics
    re-estimated first from ``bn_recalibrate`` training batches (0: the stored EMA), with or
    without the training augmentation (docs/training.md, "BatchNorm statistics")."""

    bn_recalibrate: Int = Field(0, ge=0)
    bn_augment: Bool = False
    # best.safetensors: the epoch with the best test top-1, or held-out top-1 (data.val_split)
    select_on: Literal["test", "val"] = "test"


@dataclass(config=_SECTION)
class BnewConfig:
    """BNEW's concave regulariser as a proximal step (reg0, and the ramp length E)."""

    reg: Float = Field(1e-4, ge=0.0)
    epochs: Int | None = Field(None, ge=1)  # E of reg = min(reg0 (e + 1) / E, 1); null: lr's


@dataclass(config=_SECTION)
class LatentConfig:
    """What happens to the binary layers' latent weights besides the optimizer step."""

    clamp: Bool = False  # clamp to [-1, 1] after every step
    bnew: BnewConfig | None = None  # the BNEW proximal step after every step
    freeze: Bool = False  # at the phase start: replace by the binarized weights, stop training
    # clamp / prox after the optimizer step, or between the backward pass and the step
    # (BNEW's CIFAR binary_main.py / dist_main.py; its ImageNet code steps first)
    order: Literal["after_step", "before_step"] = "after_step"


@dataclass(config=_SECTION)
class TeacherConfig:
    """The frozen teacher: a registry model (name + options) and its trained weights.
    ``bn_mode``: ``eval`` normalises with the teacher's stored BatchNorm statistics; ``train``
    with each batch's own (what BNEW's ``dist_main.py`` and the mmcls distiller do: they
    never call ``.eval()`` on the teacher). Its weights and statistics never change."""

    model: dict[str, Any]
    checkpoint: Str | None = None
    bn_mode: Literal["eval", "train"] = "eval"


@dataclass(config=_SECTION)
class AttentionConfig:
    """Real-to-Binary's attention transfer between block outputs picked by module name."""

    weight: Float = Field(0.0, ge=0.0)
    layers: list[Str] = Field(default_factory=list)  # student module names (shell patterns)
    teacher_layers: list[Str] | None = None  # null: the same names in the teacher


@dataclass(config=_SECTION)
class DistillConfig:
    """Knowledge distillation from a frozen teacher (formulas in onebit.train.losses)."""

    teacher: TeacherConfig
    loss: Literal["kl", "distributional"] = "kl"
    temperature: Float = Field(1.0, ge=1e-6)
    alpha: Float = Field(1.0, ge=0.0)  # weight of the distillation term
    ce_weight: Float | None = Field(None, ge=0.0)  # null: 1 - alpha (kl), 0 (distributional)
    attention: AttentionConfig | None = None


@dataclass(config=_SECTION)
class PhaseConfig:
    """One phase of a multi-phase recipe: the base config with ``overrides`` merged in."""

    name: Str
    overrides: dict[str, Any] = Field(default_factory=dict)


@dataclass(config=_SECTION)
class RuntimeConfig:
    """Where and how the run executes; none of these change the recipe."""

    device: Str = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    cpu_precision: Literal["bf16", "fp32"] = "fp32"
    compile: Literal["auto", True, False] = "auto"
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    out: Str = "runs/auto"
    log_interval: Int = Field(50, ge=1)
    sync_bn: Bool = False


@dataclass(config=_SECTION)
class Config:
    """A whole recipe: model, data, optimizer, schedules, loss, distillation, the options
    of techniques registered from outside the package, phases and runtime."""

    model: dict[str, Any]
    # Python modules imported before the rest is read: where the user's own binarizers,
    # methods, techniques or models are registered (onebit.register_binarizer, ...)
    imports: list[Str] = Field(default_factory=list)
    data: DataKinds = Field(default_factory=DataConfig)
    optim: Optimizers = Field(default_factory=OptimConfig)
    schedule: Schedules = Field(default_factory=ScheduleConfig)
    # one key per option of the registered binarizers (onebit.quant.register_binarizer),
    # read by config_from_dict: they change as binarizers are registered
    quant: Any = Field(default_factory=QuantConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    latent: LatentConfig = Field(default_factory=LatentConfig)
    distill: DistillConfig | None = None
    # {name: options} of techniques that read techniques.<name> (onebit.register_technique):
    # each entry is read into its technique's schema dataclass; null leaves it off
    techniques: dict[str, Any] = Field(default_factory=dict)
    init: Str | None = None  # start from these weights (a run directory or .safetensors)
    phases: list[PhaseConfig] | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe) with every key, defaults included."""
        return dataclasses.asdict(self)

    def phase_configs(self) -> list[Config]:
        """The config of every phase, in order: the base config with each phase's overrides
        merged in (mappings merge key by key, anything else is replaced). A phase that
        switches a section's kind (``schedule.lr: const`` after ``step``, ``optim.name``)
        drops the options of the old kind the phase does not set itself. Without ``phases``
        the recipe is one phase, the config itself."""
        if not self.phases:
            return [self]
        base = self.to_dict()
        base["phases"] = None
        configs = []
        for i, phase in enumerate(self.phases):
            try:
                merged = merge(base, phase.overrides)
                _drop_foreign_options(merged, phase.overrides)
                configs.append(config_from_dict(merged))
            except ConfigError as err:
                raise ConfigError(f"phase {i + 1} ({phase.name}): {err}") from None
        return configs


# The sections whose options depend on their KIND key, by key path.
KIND_SECTIONS = {
    ("data",): DataConfig,
    ("optim",): OptimConfig,
    ("optim", "binary"): BinaryOptimConfig,
    ("schedule",): ScheduleConfig,
}


def _drop_foreign_options(merged: dict[str, Any], overrides: dict[str, Any]) -> None:
    """In ``merged`` (a config as a dict), reset to their defaults the inherited options of
    every section whose kind ``overrides`` switches that do not belong to the new kind."""
    for path, base in KIND_SECTIONS.items():
        section, changes = merged, overrides
        for key in path:
            section = section.get(key) if isinstance(section, dict) else None
            changes = changes.get(key) if isinstance(changes, dict) else None
        if (
            not (isinstance(section, dict) and isinstance(changes, dict))
            or base.KIND not in changes
        ):
            continue
        own = _own_options(base, _tag_of(base, section[base.KIND]))
        for name, info in base.__pydantic_fields__.items():
            if name in section and name not in changes and name not in own:
                section[name] = info.get_default(call_default_factory=True)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings key by key, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def with_seed(path: str, seed: int) -> str:
    """``path`` with ``{seed}`` replaced by ``seed`` (pairs seed k of two repeated runs)."""
    return path.replace("{seed}", str(seed))


# --------------------------------------------------------------------------- parsing


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message names a value, not all of it."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring = 3, 6, 6, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(cls: Any, data: Any, path: str) -> Any:
    """``data`` validated as ``cls`` (a section, a Config, or the pydantic form of an options
    dataclass); the first error a one-line ConfigError naming the key path under ``path``."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        unknown = [e for e in errors if e["type"] in _UNKNOWN]
        _raise(unknown[0] if unknown else errors[0], cls, data, path)


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(hint: Any) -> str:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    if typing.get_origin(hint) in (Union, types.UnionType):
        names = ["null" if a is type(None) else _type_name(a) for a in typing.get_args(hint)]
        return " or ".join(dict.fromkeys(names))
    if typing.get_origin(hint) is list:
        return "a list"
    return "a mapping"


def _members(hint: Any) -> tuple[Any, dict[Any, Any] | None]:
    """``hint`` without Annotated and null; a discriminated union as {tag: member class}."""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            tags = {
                m.tag: typing.get_args(a)[0]
                for a in args
                if typing.get_origin(a) is Annotated
                for m in typing.get_args(a)[1:]
                if isinstance(m, Tag)
            }
            if tags:
                return hint, tags
            if len(args) != 1:
                return hint, None
            hint = args[0]
        else:
            return hint, None


@dataclasses.dataclass
class _Where:
    """Where a pydantic error is: the key path, the type and input value there, and the
    section (a config dataclass) holding the key with that section's own path and input."""

    names: list[str]
    hint: Any
    node: Any
    section: Any = None
    section_names: list[str] = dataclasses.field(default_factory=list)
    section_data: Any = None


def _locate(loc: list[Any], root: Any, data: Any, prefix: str) -> _Where:
    """Follow the pydantic error location ``loc`` through the type ``root`` and the input
    ``data``; a discriminated union's tag in ``loc`` picks its member."""
    at = _Where([prefix] if prefix else [], root, data)
    while loc:
        hint, tags = _members(at.hint)
        if tags is not None:
            at.hint = tags.get(loc.pop(0))
        elif dataclasses.is_dataclass(hint):
            at.section, at.section_names, at.section_data = hint, list(at.names), at.node
            key = loc.pop(0)
            info = hint.__pydantic_fields__.get(key)
            at.names.append(str(key))
            at.node = at.node.get(key) if isinstance(at.node, dict) else None
            at.hint = None if info is None else _field_hint(info)
        elif typing.get_origin(hint) is list and isinstance(loc[0], int):
            index = loc.pop(0)
            at.names[-1] += f"[{index}]"
            at.node = at.node[index] if isinstance(at.node, list) else None
            at.hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) is dict:
            key = loc.pop(0)
            at.names.append(str(key))
            at.node = at.node.get(key) if isinstance(at.node, dict) else None
            at.hint = typing.get_args(hint)[1]
        else:
            break  # what remains names the members of a union of values
    return at


def _raise(error: dict[str, Any], root: Any, data: Any, prefix: str) -> NoReturn:
    """The pydantic ``error`` (in validating ``data`` as ``root``) as a ConfigError: the key
    path, what is wrong, and the keys or values allowed."""
    at = _locate(list(error["loc"]), root, data, prefix)
    hint, tags = _members(at.hint)
    path, section = ".".join(at.names), ".".join(at.section_names) or "the config"
    kind, own = _kind(at.section, at.section_data)
    value, what, limits = error.get("input"), error["type"], error.get("ctx") or {}
    if what in _UNKNOWN:
        close = difflib.get_close_matches(at.names[-1], own, n=1)
        hint_text = f" Did you mean {'.'.join([*at.section_names, close[0]])}?" if close else ""
        whose = f" ({at.section.KIND} {_short(kind)})" if kind else ""
        raise ConfigError(
            f"config key {path} is unknown.{hint_text} Keys of {section}{whose}: {', '.join(own)}"
        )
    if what in ("missing", "missing_argument"):
        raise ConfigError(f"config key {path} is missing")
    if what == "foreign_option":
        raise ConfigError(
            f"config key {path}: {section}.{at.section.KIND} {_short(kind)} has no option "
            f"{at.names[-1]}; its options are: {', '.join(own)}"
        )
    if tags is not None and what in ("union_tag_invalid", "union_tag_not_found"):
        key = next(iter(tags.values())).KIND
        chosen = at.node.get(key) if isinstance(at.node, dict) else None
        raise ConfigError(_not_one_of(f"{path}.{key}", chosen, list(tags)))
    if what == "literal_error":
        raise ConfigError(_not_one_of(path, value, list(typing.get_args(hint))))
    for bound, word in (("ge", "below the minimum"), ("le", "above the maximum")):
        if bound in limits:
            shown = float(value) if isinstance(limits[bound], float) else value
            raise ConfigError(f"config key {path}: {shown!r} is {word} {limits[bound]}")
    if what in ("too_short", "too_long"):
        count = limits.get("min_length", limits.get("max_length"))
        raise ConfigError(f"config key {path}: expected {count} values, got {_short(value)}")
    got = f"{_short(value)} ({type(value).__name__})"
    raise ConfigError(f"config key {path}: expected {_type_name(hint)}, got {got}")


def _field_hint(info: Any) -> Any:
    """The declared type of a pydantic field, with its discriminated union's tags."""
    if info.discriminator is not None:
        return Annotated[info.annotation, info.discriminator]
    return info.annotation


def _not_one_of(path: str, value: Any, choices: list[Any]) -> str:
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"config key {path}: {_short(value)} is not one of {', '.join(names)}{hint}"


def _kind(section: Any, data: Any) -> tuple[Any, list[str]]:
    """(the value of the section's KIND key in ``data`` or its default, the keys it allows);
    (None, every key) for a section without kinds."""
    if section is None:
        return None, []
    fields = list(section.__pydantic_fields__)
    tag = getattr(section, "TAG", None)
    if tag is None:
        return None, fields
    info = section.__pydantic_fields__[section.KIND]
    kind = data.get(section.KIND, info.default) if isinstance(data, dict) else info.default
    return kind, _own_options(section, tag)


# ------------------------------------------------------------ options of registered plugins
# The quant: keys and a technique's techniques.<name> entry are fields of ordinary dataclasses
# that users write, with checks in their metadata (min, max, choices, length). They are read
# through a pydantic form of the dataclass made when the config is read: binarizers and
# techniques registered after the Config class was defined add their keys.

_PLAIN = {int: Int, float: Float, bool: Bool, str: Str}


def _pydantic_hint(hint: Any) -> Any:
    if hint in _PLAIN:
        return _PLAIN[hint]
    if dataclasses.is_dataclass(hint):
        return _pydantic_form(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return Union[tuple(_pydantic_hint(a) for a in args)]  # noqa: UP007
    if origin is list:
        return list[_pydantic_hint(args[0])]
    if origin is dict:
        return dict[args[0], _pydantic_hint(args[1])]
    return hint


def _pydantic_form(schema: type) -> type:
    """A pydantic dataclass with the fields of the dataclass ``schema``, its metadata checks
    (``min``, ``max``, ``choices``, ``length``) as pydantic constraints."""
    hints = typing.get_type_hints(schema)
    annotations, namespace = {}, {}
    for f in dataclasses.fields(schema):
        checks = f.metadata
        hint = _pydantic_hint(hints[f.name])
        if "choices" in checks:
            hint = Literal[tuple(checks["choices"])]
        constraints = {
            "ge": checks.get("min"),
            "le": checks.get("max"),
            "min_length": checks.get("length"),
            "max_length": checks.get("length"),
        }
        annotations[f.name] = Annotated[
            hint, Field(**{k: v for k, v in constraints.items() if v is not None})
        ]
        if f.default_factory is not dataclasses.MISSING:
            namespace[f.name] = Field(default_factory=f.default_factory)
        else:
            namespace[f.name] = Field(default=f.default)
    namespace["__annotations__"] = annotations
    return dataclass(type(schema.__name__, (), namespace), config=_SECTION)


def _plain(schema: Any, value: Any) -> Any:
    """The pydantic form's instance ``value`` as an instance of the dataclass ``schema``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(schema)
        return schema(
            **{
                f.name: _plain(_dataclass_in(hints[f.name]), getattr(value, f.name))
                for f in dataclasses.fields(schema)
            }
        )
    if isinstance(value, list):
        return [_plain(schema, v) for v in value]
    return value


def _dataclass_in(hint: Any) -> Any:
    """The dataclass in ``hint`` (``Ede | None``, ``list[Ede]``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((d for a in typing.get_args(hint) if (d := _dataclass_in(a))), None)


def _read_options(schema: type, value: Any, path: str) -> Any:
    """``value`` read into the options dataclass ``schema``: an instance of ``schema``."""
    form = _pydantic_form(schema)
    return _plain(schema, _read(form, value, path))


def _check_model(model: dict[str, Any], path: str = "model") -> None:
    """``model.name`` must be registered and every other key one of its builder's options."""
    from onebit.models import model_entry

    name = model.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"config key {path}.name is missing: name a model (see `onebit models`)")
    try:
        entry = model_entry(name)
    except OneBitError as err:
        raise ConfigError(f"config key {path}.name: {err}") from None
    for key in model:
        if key != "name" and key not in entry.defaults:
            raise ConfigError(
                f"config key {path}.{key}: model {name!r} has no option {key!r}; "
                f"its options are: {', '.join(sorted(entry.defaults))}"
            )
    from onebit.quant import get_method, parse_bits

    for key, check in (("method", get_method), ("bits", parse_bits)):
        if key in model:
            try:
                check(model[key])
            except (OneBitError, TypeError, AttributeError) as err:
                raise ConfigError(f"config key {path}.{key}: {err}") from None
    if "init" in model:
        from onebit.models.init import check_init

        try:
            check_init(model["init"], f"{path}.init")
        except ConfigError as err:
            raise ConfigError(f"config key {err}") from None


def _check_sections(config: Config) -> None:
    """Checks that span keys: the teacher, the attention layers, the validation split, the
    phases."""
    if config.optim.decay_filter is not None and config.optim.decay != "all":
        raise ConfigError(
            f"config keys optim.decay ({config.optim.decay}) and optim.decay_filter both say "
            "which parameters get weight decay; keep one"
        )
    if config.distill is not None:
        _check_model(config.distill.teacher.model, "distill.teacher.model")
        if not config.distill.teacher.checkpoint:
            raise ConfigError(
                "config key distill.teacher.checkpoint is missing: give the teacher's run "
                "directory or .safetensors file"
            )
        attention = config.distill.attention
        if attention is not None and attention.weight > 0 and not attention.layers:
            raise ConfigError(
                "config key distill.attention.layers is empty: name the student modules "
                "whose outputs are compared (shell patterns, e.g. layer*.*)"
            )
    if config.eval.select_on == "val" and config.data.val_split is None:
        raise ConfigError(
            "config key eval.select_on: val picks the best epoch on a validation split held "
            "out of the training images; set data.val_split (e.g. 5000) or select_on: test"
        )
    for i, phase in enumerate(config.phases or ()):
        for key in ("phases", "runtime"):
            if key in phase.overrides:
                raise ConfigError(
                    f"config key phases[{i}].overrides.{key}: a phase cannot change {key}"
                )
    config.phase_configs()


def _technique_options(entries: dict[str, Any]) -> dict[str, Any]:
    """The ``techniques:`` section: every entry read into the ``schema`` dataclass of the
    registered technique of its name (null: left off)."""
    from onebit.train.techniques import TECHNIQUES

    schemas = {name: cls.schema for name, cls in TECHNIQUES.items() if cls.section is None}
    options = {}
    for name, value in entries.items():
        if name not in schemas:
            close = difflib.get_close_matches(name, schemas, n=1)
            hint = f" Did you mean techniques.{close[0]}?" if close else ""
            raise ConfigError(
                f"config key techniques.{name} is unknown.{hint} Registered techniques with "
                f"options there: {', '.join(schemas) or 'none'} (register one with "
                "onebit.register_technique before the config is read)"
            )
        path = f"techniques.{name}"
        options[name] = None if value is None else _read_options(schemas[name], value, path)
    return options


def config_from_dict(
    data: dict[str, Any],
    *,
    source: str = "a config",
    search: Path | None = None,
    allowed: Collection[str] = (),
) -> Config:
    """A :class:`Config` from a plain dict (as read from YAML), fully checked. Its
    ``imports:`` go through :func:`onebit.user_code.import_modules` with ``source``,
    ``search`` and ``allowed`` (by default only modules already imported are accepted)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    import_modules(data.get("imports"), source=source, search=search, allowed=allowed)
    config = _read(Config, data, "")
    config.quant = _read_options(QuantConfig, data.get("quant", {}), "quant")
    config.techniques = _technique_options(config.techniques)
    _check_model(config.model)
    _check_sections(config)
    from onebit.data import check_data_config

    check_data_config(config.data)
    return config


def data_config(values: dict[str, Any]) -> DataConfig:
    """A checked :class:`DataConfig` from the keys of a ``data:`` section."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key data: expected a mapping, got {type(values).__name__}")
    data = _read(DataKinds, values, "data")
    from onebit.data import check_data_config

    check_data_config(data)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``["optim.lr=0.05", "data.subset=null"]`` in place; values are read as YAML.

    A number indexes a list: ``phases.1.overrides.schedule.epochs=3``."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {text[:80]!r} is not KEY.PATH=VALUE, e.g. optim.lr=0.05")
        value = parse_yaml(raw, f"--set {text[:80]!r}: the value")
        node: Any = data
        for i, part in enumerate(parts):
            prefix = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"--set {text!r}: config key {prefix}: {part!r} is not an index of "
                        f"the {len(node)} entries"
                    )
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last and node.get(part) is None:
                    node[part] = {}
            else:
                section = ".".join(parts[:i])
                raise ConfigError(f"--set {text!r}: config key {section} is not a section")
            if last:
                node[index] = value
            else:
                node = node[index]


# Bounds on what a config may hold: a recipe is a few hundred values, nested a few levels.
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64


def parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML (safe loader), bounded: ConfigError naming ``where`` if it is
    malformed, nested deeper than MAX_DEPTH or expands (YAML aliases) to more than
    MAX_VALUES values, e.g. a "billion laughs" document."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}{line} is not valid YAML") from None
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{where} holds more than {MAX_VALUES:,} values (YAML aliases expanding?); "
                "a recipe needs far fewer"
            )
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested too deeply (over {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for kv in node.items() for v in kv]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return data


def read_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML file; ConfigError if it is missing, malformed, not
    UTF-8, or larger than any recipe (see :func:`parse_yaml`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text") from None
    return parse_yaml(text, f"config {path}")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read the YAML recipe at ``path``, apply ``--set`` style overrides, check every key."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (model:, data:, ...)")
    apply_overrides(data, overrides)
    # the user runs this recipe: the modules it names are theirs, found in its folder
    return config_from_dict(
        data, source=str(path), search=Path(path).parent, allowed=data.get("imports") or ()
    )


def save_config(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    from onebit.train.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
