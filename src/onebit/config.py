"""Training configs: one YAML file per recipe, read into typed dataclasses.

    config = load_config("configs/fmnist/resnet20_recu.yaml", ["optim.lr=0.05"])
    config.optim.lr, config.model["name"], config.to_dict()

Every key is checked against the dataclasses below: an unknown key, a wrong type or a value
out of range is a :class:`~onebit.errors.ConfigError` naming the key path (``optim.lr``).
The ``model`` section is ``name`` plus any options of that model's builder (see
``onebit models``); it is passed to ``create_model(**config.model)``.
The schema with every key is in docs/training.md.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import os
import re
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from onebit.errors import ConfigError, OneBitError
from onebit.quant.registry import QuantConfig


def _spec(default: Any, **checks: Any) -> Any:
    """A dataclass field with value checks: ``choices=``, ``min=``, ``max=`` (``length=`` for
    lists); ``only=`` / ``not_for=``: the values of the section's discriminating key (its class's
    ``DISCRIMINATOR``, e.g. ``optim.name``) the option belongs to (see :func:`_build`)."""
    return field(default=default, metadata=checks)


@dataclass
class DataConfig:
    """Which dataset, where it is, batch sizes, training augmentation, the validation split
    held out of the training images and the normalisation."""

    DISCRIMINATOR: ClassVar[str] = "dataset"
    dataset: str = "cifar10"
    root: str | None = None
    batch_size: int = _spec(128, min=1)
    eval_batch_size: int = _spec(128, min=1)
    augment: str = _spec("crop_flip", choices=("crop_flip", "crop", "flip", "none"))
    # the in-memory datasets only (an image folder has its own val/)
    subset: int | None = _spec(None, min=1, not_for=("imagefolder",))
    eval_subset: int | None = _spec(None, min=1, not_for=("imagefolder",))
    checksum: bool = True
    # image folders only
    image_size: int = _spec(224, min=8, only=("imagefolder",))
    workers: int = _spec(8, min=0, only=("imagefolder",))
    crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0], metadata={"length": 2, "only": ("imagefolder",)}
    )
    color_jitter: list[float] | None = field(
        default=None, metadata={"length": 4, "only": ("imagefolder",)}
    )
    # Held out of the training images as the validation split: a count, or a fraction of them;
    # which ones depends on val_split_seed alone (the split is part of the recipe, not the seed).
    val_split: int | float | None = _spec(None, not_for=("imagefolder",))
    val_split_seed: int = _spec(0, min=0, not_for=("imagefolder",))
    # Normalisation per channel; null: the dataset's own statistics.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class BinaryOptimConfig:
    """A second optimizer for the binary layers' latent weights (Bop, BMD); every other
    parameter keeps ``optim.name``. Formulas in :mod:`onebit.train.optim`."""

    DISCRIMINATOR: ClassVar[str] = "name"
    name: str = _spec("bop", choices=("bop", "bmd"))
    gamma: float = _spec(1e-4, min=0.0, only=("bop",))  # Bop adaptivity rate; follows the lr
    threshold: float = _spec(1e-8, min=0.0, only=("bop",))  # Bop flip threshold
    lr: float | None = _spec(None, min=0.0, only=("bmd",))  # BMD Adam step; null: optim.lr
    beta_growth: float = _spec(1.01, min=1.0, only=("bmd",))  # BMD: beta = beta_growth ** e
    beta_max: float = _spec(1e35, min=1.0, only=("bmd",))
    form: str = _spec("dual", choices=("dual", "primal"), only=("bmd",))  # MD-tanh-S / MD-tanh


@dataclass
class OptimConfig:
    """The optimizer(s) of the trainable parameters."""

    DISCRIMINATOR: ClassVar[str] = "name"
    name: str = _spec("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = _spec(0.1, min=0.0, max=1e4)
    momentum: float = _spec(0.9, min=0.0, only=("sgd",))
    weight_decay: float = _spec(1e-4, min=0.0)
    nesterov: bool = _spec(False, only=("sgd",))
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata={"length": 2, "only": ("adam", "adamw")}
    )
    decay: str = _spec("all", choices=("all", "conv", "no_norm"))  # which get weight decay
    # or: shell patterns over parameter names; only the matching ones get weight decay
    decay_filter: list[str] | None = None
    train: str = _spec("all", choices=("all", "batchnorm"))  # which parameters train
    binary: BinaryOptimConfig | None = None


@dataclass
class ScheduleConfig:
    """Length of training and the learning-rate schedule (applied every step)."""

    DISCRIMINATOR: ClassVar[str] = "lr"
    epochs: int = _spec(1, min=1)
    lr: str = _spec("cos", choices=("cos", "step", "linear", "const"))
    warmup_epochs: float = _spec(0.0, min=0.0)
    warmup_steps: int = _spec(0, min=0)
    warmup_from: float = _spec(0.0, min=0.0, max=1.0)
    milestones: list[float] = field(default_factory=list, metadata={"only": ("step",)})
    gamma: float = _spec(0.1, min=0.0, only=("step",))
    # A phase that trains part of a longer schedule: it starts at epoch `offset` of a
    # schedule of `total_epochs` (null: offset + epochs) epochs.
    offset: int = _spec(0, min=0)
    total_epochs: int | None = _spec(None, min=1)

    @property
    def length(self) -> int:
        """E, the length of the schedule this phase trains a part of."""
        return self.total_epochs or self.offset + self.epochs


@dataclass
class LossConfig:
    """The task loss: cross-entropy, optionally with label smoothing."""

    label_smoothing: float = _spec(0.0, min=0.0, max=1.0)


@dataclass
class EvalConfig:
    """How the model is evaluated (and checkpointed): BatchNorm running statistics
    re-estimated first from ``bn_recalibrate`` training batches (0: the stored EMA), with or
    without the training augmentation (docs/training.md, "BatchNorm statistics")."""

    bn_recalibrate: int = _spec(0, min=0)
    bn_augment: bool = False
    # best.safetensors: the epoch with the best test top-1, or held-out top-1 (data.val_split)
    select_on: str = _spec("test", choices=("test", "val"))


@dataclass
class BnewConfig:
    """BNEW's concave regulariser as a proximal step (reg0, and the ramp length E)."""

    reg: float = _spec(1e-4, min=0.0)
    epochs: int | None = _spec(None, min=1)  # E of reg = min(reg0 (e + 1) / E, 1); null: lr's


@dataclass
class LatentConfig:
    """What happens to the binary layers' latent weights besides the optimizer step."""

    clamp: bool = False  # clamp to [-1, 1] after every step
    bnew: BnewConfig | None = None  # the BNEW proximal step after every step
    freeze: bool = False  # at the phase start: replace by the binarized weights, stop training
    # clamp / prox after the optimizer step, or between the backward pass and the step
    # (BNEW's CIFAR binary_main.py / dist_main.py; its ImageNet code steps first)
    order: str = _spec("after_step", choices=("after_step", "before_step"))


@dataclass
class TeacherConfig:
    """The frozen teacher: a registry model (name + options) and its trained weights.
    ``bn_mode``: ``eval`` normalises with the teacher's stored BatchNorm statistics; ``train``
    with each batch's own (what BNEW's ``dist_main.py`` and the mmcls distiller do: they
    never call ``.eval()`` on the teacher). Its weights and statistics never change."""

    model: dict[str, Any]
    checkpoint: str | None = None
    bn_mode: str = _spec("eval", choices=("eval", "train"))


@dataclass
class AttentionConfig:
    """Real-to-Binary's attention transfer between block outputs picked by module name."""

    weight: float = _spec(0.0, min=0.0)
    layers: list[str] = field(default_factory=list)  # student module names (shell patterns)
    teacher_layers: list[str] | None = None  # null: the same names in the teacher


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher (formulas in onebit.train.losses)."""

    teacher: TeacherConfig
    loss: str = _spec("kl", choices=("kl", "distributional"))
    temperature: float = _spec(1.0, min=1e-6)
    alpha: float = _spec(1.0, min=0.0)  # weight of the distillation term
    ce_weight: float | None = _spec(None, min=0.0)  # null: 1 - alpha (kl), 0 (distributional)
    attention: AttentionConfig | None = None


@dataclass
class PhaseConfig:
    """One phase of a multi-phase recipe: the base config with ``overrides`` merged in."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """Where and how the run executes; none of these change the recipe."""

    device: str = "auto"
    precision: str = _spec("bf16", choices=("bf16", "fp32"))
    compile: str | bool = _spec("auto", choices=("auto", True, False))
    seed: int = _spec(0, min=0, max=2**63 - 1)
    out: str = "runs/auto"
    log_interval: int = _spec(50, min=1)
    sync_bn: bool = False


@dataclass
class Config:
    """A whole recipe: model, data, optimizer, schedules, loss, distillation, the options
    of techniques registered from outside the package, phases and runtime."""

    model: dict[str, Any]
    # Python modules imported before the rest is read: where the user's own binarizers,
    # methods, techniques or models are registered (onebit.register_binarizer, ...)
    imports: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # one key per option of the registered binarizers (onebit.quant.register_binarizer)
    quant: QuantConfig = field(default_factory=QuantConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    distill: DistillConfig | None = None
    # {name: options} of techniques that read techniques.<name> (onebit.register_technique):
    # each entry is read into its technique's schema dataclass; null leaves it off
    techniques: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights (a run directory or .safetensors)
    phases: list[PhaseConfig] | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

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
                _drop_foreign_options(merged, phase.overrides, type(self))
                configs.append(config_from_dict(merged))
            except ConfigError as err:
                raise ConfigError(f"phase {i + 1} ({phase.name}): {err}") from None
        return configs


def _drop_foreign_options(merged: Any, overrides: Any, cls: type) -> None:
    """In ``merged`` (a section of dataclass ``cls``, as a dict), reset to their defaults the
    inherited options that do not belong to the kind ``overrides`` switched it to (see
    :func:`_build`); recurse into the sections ``overrides`` touches."""
    if not isinstance(merged, dict) or not isinstance(overrides, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    disc = getattr(cls, "DISCRIMINATOR", None)
    if disc in overrides:
        for name, f in fields.items():
            if name in merged and name not in overrides and not _belongs(f, merged[disc]):
                merged[name] = _default(f)
    hints = typing.get_type_hints(cls)
    for key, value in overrides.items():
        if key in fields and isinstance(value, dict):
            inner = [h for h in (hints[key], *typing.get_args(hints[key]))]
            for hint in inner:
                if dataclasses.is_dataclass(hint):
                    _drop_foreign_options(merged.get(key), value, hint)


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


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(
            "null" if a is type(None) else _type_name(a) for a in typing.get_args(hint)
        )
    if typing.get_origin(hint) is list:
        return "a list"
    return "a mapping"


def _convert(value: Any, hint: Any, path: str) -> Any:
    """``value`` checked against the type ``hint``; a ConfigError naming ``path`` if it fails."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    ok = True
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                return _build(arg, value, path)  # its own key errors are the useful ones
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        ok = False
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, path)
        ok = False
    elif origin is list:
        if isinstance(value, list):
            return [_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        ok = False
    elif origin is dict:
        if isinstance(value, dict):
            return {str(k): _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
        ok = False
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept any text float() reads.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                ok = False
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    if not ok:
        got = f"{_short(value)} ({type(value).__name__})"
        raise ConfigError(f"config key {path}: expected {_type_name(hint)}, got {got}")
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message names a value, not all of it."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring = 3, 6, 6, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(value: Any, checks: dict[str, Any], path: str) -> None:
    if value is None:
        return
    if "choices" in checks and value not in checks["choices"]:
        names = [str(c).lower() if isinstance(c, bool) else c for c in checks["choices"]]
        close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"config key {path}: {_short(value)} is not one of {', '.join(names)}{hint}"
        )
    if "min" in checks and value < checks["min"]:
        raise ConfigError(f"config key {path}: {value!r} is below the minimum {checks['min']}")
    if "max" in checks and value > checks["max"]:
        raise ConfigError(f"config key {path}: {value!r} is above the maximum {checks['max']}")
    if "length" in checks and len(value) != checks["length"]:
        raise ConfigError(
            f"config key {path}: expected {checks['length']} values, got {_short(value)}"
        )


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _belongs(f: dataclasses.Field, chosen: Any) -> bool:
    """Whether option ``f`` belongs to the section's discriminating value ``chosen``."""
    only, not_for = f.metadata.get("only"), f.metadata.get("not_for", ())
    return (only is None or chosen in only) and chosen not in not_for


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    """Instance of dataclass ``cls`` from ``data``; unknown keys and wrong types are errors.

    A section whose options depend on one of its keys (``cls.DISCRIMINATOR``: ``optim.name``,
    ``optim.binary.name``, ``schedule.lr``, ``data.dataset``) accepts for each value of that
    key its own options only: another's option is an error unless it holds its default (so a
    resolved config, which lists every key, reads back)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    where = f"{path}." if path else ""
    disc = getattr(cls, "DISCRIMINATOR", None)
    chosen = data.get(disc, _default(fields[disc])) if disc else None
    own = [n for n, f in fields.items() if _belongs(f, chosen)]
    whose = f" ({disc} {_short(chosen)})" if disc else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), own, n=1)
            hint = f" Did you mean {where}{close[0]}?" if close else ""
            raise ConfigError(
                f"config key {where}{key} is unknown.{hint} "
                f"Keys of {path or 'the config'}{whose}: {', '.join(own)}"
            )
    values = {}
    for name, f in fields.items():
        key_path = f"{where}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key {key_path} is missing")
            continue
        values[name] = _convert(data[name], hints[name], key_path)
        _check(values[name], dict(f.metadata), key_path)
        if not _belongs(f, chosen) and values[name] != _default(f):
            raise ConfigError(
                f"config key {key_path}: {path}.{disc} {_short(chosen)} has no option {name}; "
                f"its options are: {', '.join(own)}"
            )
    return cls(**values)


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
        options[name] = None if value is None else _convert(value, schemas[name], path)
    return options


def config_from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a plain dict (as read from YAML), fully checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    import_modules(data.get("imports"))
    config = _build(Config, data, "")
    config.techniques = _technique_options(config.techniques)
    _check_model(config.model)
    _check_sections(config)
    from onebit.data import check_data_config

    check_data_config(config.data)
    return config


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_modules(names: Any) -> None:
    """Import the modules a config's ``imports:`` names (each once; the working directory is
    searched too, so a module next to where ``onebit`` runs is found). Only names: a config
    or a checkpoint cannot bring code of its own, it can only ask for modules already here."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"config key imports: expected a list of module names, got {_short(names)}"
        )
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"config key imports: {_short(name)} is not a module name (a.b.c)")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(
                f"config key imports: cannot import {name!r} ({err}); put the module on "
                "PYTHONPATH or in the working directory"
            ) from None


def data_config(values: dict[str, Any]) -> DataConfig:
    """A checked :class:`DataConfig` from the keys of a ``data:`` section."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key data: expected a mapping, got {type(values).__name__}")
    data = _build(DataConfig, values, "data")
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
    return config_from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    from onebit.train.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
