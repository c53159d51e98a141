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

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from onebit.errors import ConfigError, OneBitError


def _spec(default: Any, **checks: Any) -> Any:
    """A dataclass field with value checks: ``choices=``, ``min=``, ``max=`` (``length=`` for
    lists)."""
    return field(default=default, metadata=checks)


@dataclass
class DataConfig:
    """Which dataset, where it is, batch sizes and training augmentation."""

    dataset: str = "cifar10"
    root: str | None = None
    batch_size: int = _spec(128, min=1)
    eval_batch_size: int = _spec(128, min=1)
    augment: str = _spec("crop_flip", choices=("crop_flip", "crop", "flip", "none"))
    subset: int | None = _spec(None, min=1)
    eval_subset: int | None = _spec(None, min=1)
    checksum: bool = True
    image_size: int = _spec(224, min=8)
    workers: int = _spec(8, min=0)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0], metadata={"length": 2})
    color_jitter: list[float] | None = field(default=None, metadata={"length": 4})


@dataclass
class OptimConfig:
    """The optimizer of every trainable parameter."""

    name: str = _spec("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = _spec(0.1, min=0.0)
    momentum: float = _spec(0.9, min=0.0)
    weight_decay: float = _spec(1e-4, min=0.0)
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"length": 2})


@dataclass
class ScheduleConfig:
    """Length of training and the learning-rate schedule (applied every step)."""

    epochs: int = _spec(1, min=1)
    lr: str = _spec("cos", choices=("cos", "step", "linear", "const"))
    warmup_epochs: float = _spec(0.0, min=0.0)
    warmup_steps: int = _spec(0, min=0)
    warmup_from: float = _spec(0.0, min=0.0, max=1.0)
    milestones: list[float] = field(default_factory=list)
    gamma: float = _spec(0.1, min=0.0)


@dataclass
class EdeConfig:
    """IR-Net's EDE schedule: t from t_min to t_max over training."""

    t_min: float = _spec(1e-3, min=0.0)
    t_max: float = _spec(10.0, min=0.0)


@dataclass
class QuantConfig:
    """Schedules of the binarizers' state (each layer reads only what its binarizer uses)."""

    tau: list[float] = field(default_factory=lambda: [0.85, 0.99], metadata={"length": 2})
    ede: EdeConfig = field(default_factory=EdeConfig)


@dataclass
class LossConfig:
    """The task loss: cross-entropy, optionally with label smoothing."""

    label_smoothing: float = _spec(0.0, min=0.0, max=1.0)


@dataclass
class RuntimeConfig:
    """Where and how the run executes; none of these change the recipe."""

    device: str = "auto"
    precision: str = _spec("bf16", choices=("bf16", "fp32"))
    compile: str | bool = _spec("auto", choices=("auto", True, False))
    seed: int = 0
    out: str = "runs/auto"
    log_interval: int = _spec(50, min=1)
    sync_bn: bool = False


@dataclass
class Config:
    """A whole recipe: model, data, optimizer, schedules, loss and runtime."""

    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: dict[str, Any] | None = None
    phases: list[Any] | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe) with every key, defaults included."""
        return dataclasses.asdict(self)


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
        got = f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"config key {path}: expected {_type_name(hint)}, got {got}")
    return value


def _check(value: Any, checks: dict[str, Any], path: str) -> None:
    if value is None:
        return
    if "choices" in checks and value not in checks["choices"]:
        choices = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in checks["choices"])
        raise ConfigError(f"config key {path}: {value!r} is not one of {choices}")
    if "min" in checks and value < checks["min"]:
        raise ConfigError(f"config key {path}: {value!r} is below the minimum {checks['min']}")
    if "max" in checks and value > checks["max"]:
        raise ConfigError(f"config key {path}: {value!r} is above the maximum {checks['max']}")
    if "length" in checks and len(value) != checks["length"]:
        raise ConfigError(f"config key {path}: expected {checks['length']} values, got {value!r}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    """Instance of dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    where = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {where}{close[0]}?" if close else ""
            raise ConfigError(
                f"config key {where}{key} is unknown.{hint} "
                f"Keys of {path or 'the config'}: {', '.join(fields)}"
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
    return cls(**values)


def _check_model(model: dict[str, Any]) -> None:
    """``model.name`` must be registered and every other key one of its builder's options."""
    from onebit.models import model_entry

    name = model.get("name")
    if not isinstance(name, str):
        raise ConfigError("config key model.name is missing: name a model (see `onebit models`)")
    try:
        entry = model_entry(name)
    except OneBitError as err:
        raise ConfigError(f"config key model.name: {err}") from None
    for key in model:
        if key != "name" and key not in entry.defaults:
            raise ConfigError(
                f"config key model.{key}: model {name!r} has no option {key!r}; "
                f"its options are: {', '.join(sorted(entry.defaults))}"
            )


def _check_later_sections(config: Config) -> None:
    for key in ("distill", "phases"):
        if getattr(config, key) is not None:
            raise ConfigError(f"config key {key}: not supported yet; set {key}: null")


def config_from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a plain dict (as read from YAML), fully checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    config = _build(Config, data, "")
    _check_model(config.model)
    _check_later_sections(config)
    from onebit.data import check_dataset_name

    check_dataset_name(config.data.dataset)
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``["optim.lr=0.05", "data.subset=null"]`` in place; values are read as YAML."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {text!r} is not KEY.PATH=VALUE, e.g. optim.lr=0.05")
        node = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                prefix = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {text!r}: config key {prefix} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {text!r}: the value is not valid YAML") from None


def read_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML file; ConfigError if it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path}{where} is not valid YAML") from None


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
