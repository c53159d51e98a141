"""Training configs: one YAML file per recipe, read into typed sections.

    config = load_config("configs/fmnist/resnet20_recu.yaml", ["optim.lr=0.05"])
    config.optim.lr, config.model["name"], config.to_dict()

A recipe's top-level keys are its sections. Each section is owned by what it configures and
registered here with :func:`register_section` (the data schemas in ``onebit.data``, the
optimizers' in ``onebit.train.optim``, each technique's with its technique, ...): this module
composes what the registries hand it, reads YAML and ``--set`` overrides, and turns every
wrong key, type or value into a :class:`~onebit.errors.ConfigError` naming the key path
(``optim.lr``), one line. It imports nothing of onebit above ``errors`` and ``io``.

A section whose options depend on one of its keys (``optim.name``, ``optim.binary.name``,
``schedule.lr``, ``data.dataset``) is a discriminated union of one class per kind
(:func:`kinds`), each accepting its own options only. The ``model`` section is ``name`` plus
any options of that model's builder (see ``onebit models``); it is passed to
``create_model(**config.model)``. The schema with every key is in docs/training.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable, Collection, Hashable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union

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

from onebit.errors import ConfigError, did_you_mean
from onebit.io import atomic_write
from onebit.user_code import import_modules

_SECTION = ConfigDict(extra="forbid")


def as_number(value: Any) -> Any:
    """``value``, or the float a text reads as: YAML 1.1 reads "1e-4" (no dot) as a string.
    NaN (``.nan``, "nan") is no setting of anything: an error of its own."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and math.isnan(value):
        raise PydanticCustomError("nan", "NaN is not a value it takes; give a number")
    return value


# The value types of config keys: no coercion between them (true is no integer, 1 no string),
# except that an integer or a numeric text is a number.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(as_number)]
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


def section(cls: type) -> type:
    """The pydantic dataclass of a config section: unknown keys are errors."""
    return dataclass(cls, config=_SECTION)


@dataclasses.dataclass(frozen=True)
class _KindsOf:
    """Marks the union :func:`kinds` makes of ``base``'s kinds."""

    base: type


def kinds(base: type) -> Any:
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

    union = Union[tuple(members)]  # noqa: UP007
    return Annotated[union, Discriminator(discriminate), _KindsOf(base)]


def _tag_of(base: type, chosen: Any) -> Any:
    kind_of = getattr(base, "kind_of", None)
    return kind_of(chosen) if kind_of else chosen


def _own_options(base: type, tag: str) -> list[str]:
    """The options of ``base``'s kind ``tag``: those of every kind and its own."""
    theirs = {name for kind, names in base.OWN.items() if kind != tag for name in names}
    return [n for n in base.__pydantic_fields__ if n not in theirs or n in base.OWN.get(tag, ())]


# --------------------------------------------------------------------------- parsing


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message names a value, not all of it."""
    short = reprlib.Repr()  # keyword arguments only from Python 3.12
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring = 3, 6, 6, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_value(cls: Any, data: Any, path: str) -> Any:
    """``data`` validated as ``cls`` (a section, a union of :func:`kinds`, the pydantic form of
    an options dataclass or a plain type); the first error a one-line ConfigError naming the
    key path under ``path``, an unknown key before any other."""
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
            at.hint = None if info is None else info.annotation
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
        prefix = "".join(f"{name}." for name in at.section_names)
        hint_text = did_you_mean(at.names[-1], own, prefix=prefix)
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


def _not_one_of(path: str, value: Any, choices: list[Any]) -> str:
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]
    hint = did_you_mean(value, names, lead="; did you mean ")
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


def read_options(schema: type, value: Any, path: str) -> Any:
    """``value`` read into the plain options dataclass ``schema``: an instance of ``schema``."""
    return _plain(schema, read_value(_pydantic_form(schema), value, path))


# --------------------------------------------------------------------------- the sections


@dataclasses.dataclass(frozen=True)
class Section:
    """A top-level key of a recipe, registered by what it configures."""

    key: str
    schema: Any  # the type its value is read as (read_value); None when ``read`` reads it
    position: int  # where it stands in a resolved config (to_dict, config.yaml, messages)
    default: Any  # the value read when a recipe leaves the key out; REQUIRED: it must be given
    read: Callable[[Any, str], Any] | None  # (value, key path) -> the section, instead of schema
    check: Callable[[Any], None] | None  # after reading: checks beyond the schema's
    per_phase: bool  # whether a phase's overrides may change it

    def load(self, value: Any, path: str) -> Any:
        loaded = self.read(value, path) if self.read else read_value(self.schema, value, path)
        if self.check is not None:
            self.check(loaded)
        return loaded


REQUIRED = object()
SECTIONS: dict[str, Section] = {}
# Checks that span sections, run on the whole Config once every section is read.
CONFIG_CHECKS: list[Callable[[Config], None]] = []


def register_section(
    key: str,
    schema: Any = None,
    *,
    position: int,
    default: Any = dataclasses.MISSING,
    read: Callable[[Any, str], Any] | None = None,
    check: Callable[[Any], None] | None = None,
    per_phase: bool = True,
) -> None:
    """Make ``key`` a top-level key of every recipe, read as ``schema`` (a :func:`section`
    class, a union of :func:`kinds`, or a plain type) or by ``read(value, path)``, then
    checked by ``check(section)``. A recipe without the key reads ``default`` ({} unless
    given; :data:`REQUIRED`: the key must be there)."""
    if (schema is None) == (read is None):
        raise TypeError(f"section {key!r}: give a schema or a read function, not both")
    default = {} if default is dataclasses.MISSING else default
    SECTIONS[key] = Section(key, schema, position, default, read, check, per_phase)


def register_config_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    """Run ``check(config)`` on every config read: for rules that span sections."""
    CONFIG_CHECKS.append(check)
    return check


def _sections() -> list[Section]:
    return sorted(SECTIONS.values(), key=lambda s: s.position)


class Config:
    """A whole recipe: one attribute per registered section (``config.optim.lr``,
    ``config.model["name"]``), read by :func:`config_from_dict`."""

    def __init__(self, sections: dict[str, Any]):
        self.__dict__.update(sections)

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and vars(self) == vars(other)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-safe) with every key, defaults included."""
        return {key: _plain_data(value) for key, value in vars(self).items()}

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


def _plain_data(value: Any) -> Any:
    """``value`` with every dataclass in it as a dict (``dataclasses.asdict``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_data(v) for v in value]
    return copy.deepcopy(value)


@section
class PhaseConfig:
    """One phase of a multi-phase recipe: the base config with ``overrides`` merged in."""

    name: Str
    overrides: dict[str, Any] = Field(default_factory=dict)


def _check_phases(phases: list[PhaseConfig] | None) -> None:
    fixed = [s.key for s in _sections() if not s.per_phase]
    for i, phase in enumerate(phases or ()):
        for key in fixed:
            if key in phase.overrides:
                raise ConfigError(
                    f"config key phases[{i}].overrides.{key}: a phase cannot change {key}"
                )


# The sections of the config itself; the others are registered by what they configure.
# Python modules imported before the rest is read: where the user's own binarizers,
# methods, techniques or models are registered (onebit.register_binarizer, ...)
register_section("imports", list[Str], position=10, default=[])
# start from these weights (a run directory or .safetensors)
register_section("init", Str | None, position=110, default=None)
register_section(
    "phases", list[PhaseConfig] | None, position=120, default=None, check=_check_phases
)


def _section_class(hint: Any) -> tuple[type | None, type | None]:
    """(the section class, its kinds' base class if it is a union of :func:`kinds`) of a
    field's type ``hint``; (None, None) for a value that is no section."""
    while True:
        if typing.get_origin(hint) is Annotated:
            marks = [m for m in typing.get_args(hint)[1:] if isinstance(m, _KindsOf)]
            if marks:
                return marks[0].base, marks[0].base
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                return None, None
            hint = args[0]
        elif hasattr(hint, "__pydantic_fields__"):
            return hint, None
        else:
            return None, None


def _drop_foreign_options(merged: dict[str, Any], overrides: dict[str, Any]) -> None:
    """In ``merged`` (a config as a dict), reset to their defaults the inherited options of
    every section whose kind ``overrides`` switches that do not belong to the new kind."""
    for key, entry in SECTIONS.items():
        if entry.schema is not None:
            _drop_in(entry.schema, merged.get(key), overrides.get(key))


def _drop_in(hint: Any, section: Any, changes: Any) -> None:
    cls, base = _section_class(hint)
    if cls is None or not (isinstance(section, dict) and isinstance(changes, dict)):
        return
    if base is not None and base.KIND in changes:
        own = _own_options(base, _tag_of(base, section[base.KIND]))
        for name, info in base.__pydantic_fields__.items():
            if name in section and name not in changes and name not in own:
                section[name] = info.get_default(call_default_factory=True)
    for name, info in cls.__pydantic_fields__.items():
        _drop_in(info.annotation, section.get(name), changes.get(name))


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


# --------------------------------------------------------------------------- reading


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
    sections = _sections()
    keys = [s.key for s in sections]
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(
                f"config key {key} is unknown.{did_you_mean(key, keys)} Keys of the config: "
                f"{', '.join(keys)}"
            )
    values = {}
    for entry in sections:
        value = data.get(entry.key, entry.default)
        if value is REQUIRED:
            raise ConfigError(f"config key {entry.key} is missing")
        values[entry.key] = entry.load(value, entry.key)
    config = Config(values)
    for check in CONFIG_CHECKS:
        check(config)
    config.phase_configs()
    return config


def read_section(key: str, values: Any) -> Any:
    """The registered section ``key`` read (and checked) from the keys of a recipe's
    ``key:`` section, e.g. ``read_section("data", {"dataset": "cifar10"})``."""
    return SECTIONS[key].load(values, key)


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
    if not isinstance(path, (str, Path)):
        hint = "; for a dict use onebit.config.config_from_dict" if isinstance(path, dict) else ""
        raise ConfigError(
            f"load_config takes the path of a YAML file, got {type(path).__name__}{hint}"
        )
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(
            "load_config(overrides=...) takes a list of 'key.path=value' strings, got "
            f"{overrides!r:.80}"
        )
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
    atomic_write(path, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
