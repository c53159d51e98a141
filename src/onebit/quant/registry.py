"""The binarizer registry: ``@register_binarizer`` and the ``quant:`` config section it builds.

A binarizer is a differentiable ``f(x, **state)`` plus what the rest of onebit reads about it:
the state it takes (tensor buffers that its schedule fills every epoch, Python-number
constants), the schedule (a pure function of the epoch and the binarizer's config options),
the names the trainer logs the scheduled values under, its options (a dataclass whose fields
are keys of the ``quant:`` config section) and the extras a layer gives it (a learned output
scale, a learned input threshold, the module's training flag). Layers, the trainer, logging,
count_ops and export read these fields; none of them names a binarizer.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from onebit.config import read_options, register_section
from onebit.errors import ConfigError, UnknownNameError

F = TypeVar("F", bound=Callable[..., torch.Tensor])
Schedule = Callable[[float, int, Any], Mapping[str, Any]]

KINDS = ("act", "weight")
# How a learned per-output-channel scale starts: ReCU's alpha is U[0, 1), the others 1.
SCALE_INITS: dict[str, Callable[..., torch.Tensor]] = {"ones": torch.ones, "uniform": torch.rand}
# The keyword arguments a layer passes for the ``training`` and ``learned_bias`` flags.
_LAYER_ARGUMENTS = ("training", "bias")


@dataclass(frozen=True)
class Binarizer:
    """A registered binarizer: its function and what layers, trainer and export read of it.

    A layer calls ``fn(x, **kwargs)`` with: every ``state`` entry (a 0-dim tensor buffer of the
    layer, filled in place by ``schedule``: no host sync, no recompilation), every
    ``constants`` entry (a Python number, also set by ``schedule``), ``training=`` the layer's
    mode if ``training``, and ``bias=`` the layer's learnable per-input-channel threshold if
    ``learned_bias``. ``bits``: bits per output value (count_ops counts a layer's MACs as
    binary operations when both its binarizers have 1). ``signs``: an activation binarizer
    whose forward returns exactly -1 or +1 (no scale, no 0), which lets a CPU training step
    compute the layer's convolution from exact bfloat16 sums (:mod:`onebit.nn.exact_conv`).
    """

    kind: str
    name: str
    fn: Callable[..., torch.Tensor]
    state: Mapping[str, float] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    schedule: Schedule | None = None
    log: Mapping[str, str] = field(default_factory=dict)
    options: type | None = None
    learned_scale: bool = False
    scale_init: str = "ones"
    learned_bias: bool = False
    training: bool = False
    bits: int = 1
    signs: bool = False

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def state_at(self, epoch: float, epochs: int, quant: Any = None) -> dict[str, Any]:
        """The state values ``schedule`` gives at (fractional) ``epoch`` of ``epochs``, from
        this binarizer's options in ``quant`` (a :class:`QuantConfig`; None: their defaults)."""
        if self.schedule is None:
            return {}
        values = dict(self.schedule(epoch, epochs, options_of(self.options, quant)))
        unknown = sorted(set(values) - set(self.state) - set(self.constants))
        if unknown:
            raise ValueError(
                f"{self.kind} binarizer {self.name!r}: its schedule sets {unknown[0]!r}, "
                f"which is neither in its state nor in its constants"
            )
        return values


ACTIVATIONS: dict[str, Binarizer] = {}
WEIGHTS: dict[str, Binarizer] = {}
_TABLES = {"act": ACTIVATIONS, "weight": WEIGHTS}
# Option dataclasses in the order they were first registered: the order of the quant: keys.
_SCHEMAS: list[type] = []


@dataclass
class QuantConfig:
    """The ``quant:`` config section: one key per field of the registered binarizers' options
    (built in: ``tau``, ``ede``, ``ste_clip``). A binarizer registered with new options adds
    their keys, so a config naming them is accepted (see :func:`register_binarizer`)."""

    def __getattr__(self, name: str) -> Any:
        # an instance made before a binarizer added its options reads their defaults
        fields = type(self).__dataclass_fields__
        if name in fields:
            return _default(fields[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# one key per option of the registered binarizers: read with the fields QuantConfig has then
register_section(
    "quant", read=lambda value, path: read_options(QuantConfig, value, path), position=50
)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def options_of(schema: type | None, quant: Any = None) -> Any:
    """An instance of the options dataclass ``schema`` with its values from ``quant`` (a
    :class:`QuantConfig`), or its defaults when ``quant`` is None; None without a schema."""
    if schema is None:
        return None
    if quant is None:
        return schema()
    return schema(**{f.name: getattr(quant, f.name) for f in dataclasses.fields(schema)})


def _used_schemas() -> list[type]:
    used = {id(s.options) for table in _TABLES.values() for s in table.values()}
    return [schema for schema in _SCHEMAS if id(schema) in used]


def _refresh_quant_config() -> None:
    """Give :class:`QuantConfig` the fields of the options of every registered binarizer.

    The class stays the same object (``Config.quant`` and imports of it keep working); its
    dataclass methods are those of a class made afresh from the fields.
    """
    fields = [spec for schema in _used_schemas() for spec in _option_fields(schema)]
    fresh = dataclasses.make_dataclass("QuantConfig", fields)
    for attr in ("__init__", "__repr__", "__eq__", "__dataclass_fields__", "__match_args__"):
        setattr(QuantConfig, attr, getattr(fresh, attr))
    QuantConfig.__annotations__ = {name: hint for name, hint, _ in fields}


def _option_fields(schema: type) -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of each option of ``schema``, for :func:`dataclasses.make_dataclass`."""
    try:
        hints = typing.get_type_hints(schema)
    except NameError as err:
        raise ConfigError(
            f"options {schema.__name__}: cannot resolve the type of a field ({err}); define "
            "the options dataclasses at module level (string annotations are read there)"
        ) from None
    return [
        (
            f.name,
            hints[f.name],
            field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(schema)
    ]


def _check_options(spec: Binarizer) -> None:
    schema = spec.options
    if schema is None:
        return
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise ConfigError(
            f"binarizer {spec.name!r}: options= must be a dataclass (its fields "
            f"are the keys under quant:), got {schema!r}"
        )
    for f in dataclasses.fields(schema):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"binarizer {spec.name!r}: option quant.{f.name} ({schema.__name__}) has no "
                "default; every option needs one"
            )
    keys = {name for name, _, _ in _option_fields(schema)}
    for other in _others(spec):
        if other.options is None or other.options is schema:
            continue
        clash = sorted(keys & {f.name for f in dataclasses.fields(other.options)})
        if clash:
            raise ConfigError(
                f"binarizer {spec.name!r}: option quant.{clash[0]} of {schema.__name__} is "
                f"already a key of {other.options.__name__} ({other.kind} binarizer "
                f"{other.name!r}); pass options={other.options.__name__} to share it, or "
                "rename the key"
            )


def _others(spec: Binarizer) -> list[Binarizer]:
    """The registered binarizers other than the one ``spec`` replaces."""
    return [
        s
        for kind, table in _TABLES.items()
        for name, s in table.items()
        if (kind, name) != (spec.kind, spec.name)
    ]


def _check(spec: Binarizer) -> None:
    """ConfigError for a registration the layers, schedules or config could not use."""
    where = f"binarizer {spec.name!r}"
    if not isinstance(spec.name, str) or not spec.name.strip():
        raise ConfigError(f"{where}: a binarizer's name is a non-empty string")
    if not callable(spec.fn):
        raise ConfigError(f"{where}: register a function fn(x, ...), got {type(spec.fn).__name__}")
    if spec.schedule is not None and not callable(spec.schedule):
        raise ConfigError(f"{where}: schedule= must be a function (epoch, epochs, options)")
    if spec.kind not in KINDS:
        raise ConfigError(f"{where}: kind {spec.kind!r} is not one of {', '.join(KINDS)}")
    names = [*spec.state, *spec.constants]
    for name in names:
        if not name.isidentifier() or name in _LAYER_ARGUMENTS or names.count(name) > 1:
            raise ConfigError(
                f"{where}: state name {name!r} must be an identifier, not "
                f"{' or '.join(_LAYER_ARGUMENTS)} (set training=/learned_bias= for those), "
                "and in only one of state and constants"
            )
    for name in spec.log:
        if name not in names:
            raise ConfigError(f"{where}: log names {name!r}, which is not one of its states")
    if spec.scale_init not in SCALE_INITS:
        raise ConfigError(
            f"{where}: scale_init {spec.scale_init!r} is not one of {', '.join(SCALE_INITS)}"
        )
    if spec.learned_scale and spec.kind != "weight":
        raise ConfigError(f"{where}: learned_scale (a per-output-channel scale) is for weights")
    if spec.learned_bias and spec.kind != "act":
        raise ConfigError(
            f"{where}: learned_bias (a per-input-channel threshold) is for activations"
        )
    if spec.signs and (spec.kind != "act" or spec.bits != 1):
        raise ConfigError(
            f"{where}: signs (a forward of exactly -1 or +1) is for 1-bit activations; a "
            "binarized weight's +-s form is checked at run time"
        )
    if not isinstance(spec.bits, int) or spec.bits < 1:
        raise ConfigError(f"{where}: bits must be a positive integer, got {spec.bits!r}")
    _check_options(spec)
    for other in _others(spec):
        for state, key in spec.log.items():
            if key in other.log.values() and other.schedule is not spec.schedule:
                raise ConfigError(
                    f"{where}: log name {key!r} of {state!r} is already logged by "
                    f"{other.kind} binarizer {other.name!r} with another schedule; rename it"
                )


def register_binarizer(
    kind: str,
    name: str,
    *,
    state: Mapping[str, float] | None = None,
    constants: Mapping[str, Any] | None = None,
    schedule: Schedule | None = None,
    log: Mapping[str, str] | None = None,
    options: type | None = None,
    learned_scale: bool = False,
    scale_init: str = "ones",
    learned_bias: bool = False,
    training: bool = False,
    bits: int = 1,
    signs: bool = False,
) -> Callable[[F], F]:
    """Decorator: register ``fn(x, **state)`` as the ``kind`` (``"act"``/``"weight"``)
    binarizer ``name``; afterwards ``method``s, layers, configs and the trainer can use it.

    ``state``: name -> initial value of the scheduled values it reads, kept as 0-dim tensor
    buffers on each layer (e.g. ``{"tau": 1.0}``). ``constants``: name -> initial value of the
    values kept as Python numbers (e.g. ``{"clip": 1.0}``: no host sync to read, and a number
    can select a code path). ``schedule(epoch, epochs, options) -> {name: value}`` sets both
    every epoch (``epoch`` may be fractional), ``options`` an instance of ``options`` built from
    the config's ``quant:`` section. ``log``: state name -> metrics key of the values the
    trainer logs (``{"t": "ede_t"}``). ``options``: a dataclass whose fields (each with a
    default; ``field(metadata={"min": 0.0})``, ``"max"``, ``"choices"``, ``"length"`` add
    checks) become keys under ``quant:``; binarizers passing the same class share the keys, a
    key of another class is an error. ``learned_scale``: the layer multiplies its output by a
    learnable per-channel alpha (weights), starting at ``scale_init`` (``"ones"`` or
    ``"uniform"``: U[0, 1)). ``learned_bias``: the layer owns a learnable per-input-channel
    threshold, passed as ``bias=`` (activations). ``training``: ``fn`` gets ``training=`` the
    layer's mode. ``bits``: bits per output value (1 for +-s). ``signs``: an activation
    binarizer whose forward returns exactly -1 or +1, never 0 or a scaled value (a CPU step
    may then compute its layer's convolution in exact bfloat16 sums, onebit.nn.exact_conv;
    a wrong True gives wrong outputs). Registering a name again replaces it (with a
    warning). See docs/extending.md.
    """

    def deco(fn: F) -> F:
        spec = Binarizer(
            kind,
            name,
            fn,
            dict(state or {}),
            dict(constants or {}),
            schedule,
            dict(log or {}),
            options,
            learned_scale,
            scale_init,
            learned_bias,
            training,
            bits,
            signs,
        )
        _check(spec)
        table = _TABLES[kind]
        if name in table:
            warnings.warn(f"replacing the registered {kind} binarizer {name!r}", stacklevel=2)
        table[name] = spec
        if options is not None and options not in _SCHEMAS:
            _SCHEMAS.append(options)
        _refresh_quant_config()
        return fn

    return deco


def unregister_binarizer(kind: str, name: str) -> None:
    """Remove the ``kind`` binarizer ``name`` (and the ``quant:`` keys only it used)."""
    binarizer(kind, name)  # an error naming the registered ones if there is none
    del _TABLES[kind][name]
    _refresh_quant_config()


def declare_options(*schemas: type) -> None:
    """Fix the order of the ``quant:`` keys of ``schemas`` ahead of their registration."""
    _SCHEMAS.extend(s for s in schemas if s not in _SCHEMAS)


def binarizer(kind: str, name: str) -> Binarizer:
    """The registered ``kind`` (``"act"``/``"weight"``) binarizer called ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    table = _TABLES[kind]
    if name not in table:
        what = "activation binarizer" if kind == "act" else "weight binarizer"
        raise UnknownNameError(what, name, table)
    return table[name]


def act_spec(name: str) -> Binarizer:
    """The activation binarizer spec called ``name``."""
    return binarizer("act", name)


def weight_spec(name: str) -> Binarizer:
    """The weight binarizer spec called ``name``."""
    return binarizer("weight", name)


def act(name: str) -> Callable[..., torch.Tensor]:
    """The activation binarizer ``f(x, **state)`` called ``name`` (see :data:`ACTIVATIONS`)."""
    return act_spec(name).fn


def weight(name: str) -> Callable[..., torch.Tensor]:
    """The weight binarizer ``f(w, **state)`` called ``name`` (see :data:`WEIGHTS`)."""
    return weight_spec(name).fn
