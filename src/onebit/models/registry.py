"""Model registry: ``@register_model`` on a builder, then ``create_model(name, **options)``.

A model family declares its options as a frozen dataclass derived from :class:`ModelOptions`
(the options every model takes) or :class:`StemOptions`, with its paper's defaults. Each
variant registers an instance of it (its defaults, e.g. ``BiRealOptions(method="reactnet")``)
and calls the family's ``_create_<family>`` function, which reads the options with
``BiRealOptions.of(variant, kwargs)``: see docs/models.md, "Adding a model".
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import torch.nn as nn

if TYPE_CHECKING:
    from onebit.data import InputSpec

from onebit.config import REQUIRED, register_section
from onebit.errors import ConfigError, OneBitError, UnknownNameError
from onebit.models.init import apply_init, check_init
from onebit.nn import BinaryLayers

_Options = TypeVar("_Options", bound="ModelOptions")


@dataclass(frozen=True)
class ModelOptions:
    """The options every registered model takes; a family's options dataclass derives from it.

    ``method``: the binarization recipe (no default here: each family names its paper's);
    ``bits``: "1w1a", "1w32a", "32w1a" or "32w32a"; ``block_act``: the block activation
    (None: the method's).
    """

    method: str
    bits: str = "1w1a"
    num_classes: int = 1000
    in_chans: int = 3
    block_act: str | None = None

    def layers(self) -> BinaryLayers:
        """The conv / activation factory of ``method``, ``bits`` and ``block_act``."""
        return BinaryLayers.of(self.method, self.bits, self.block_act)

    @classmethod
    def of(cls: type[_Options], name: str, options: Mapping[str, object]) -> _Options:
        """The options the registered model ``name`` is built with: its registered defaults
        with ``options`` on top (an option it lacks is a TypeError, as for any function)."""
        registered = model_entry(name).options
        if not isinstance(registered, cls):
            raise TypeError(f"model {name!r} is not registered with {cls.__name__} options")
        return replace(registered, **options)


@dataclass(frozen=True)
class StemOptions(ModelOptions):
    """:class:`ModelOptions` plus ``stem_act``, the activation after the stem conv + BN (None:
    the block activation; "none": identity). Every model but VGG-Small and the WRNs has one."""

    stem_act: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder, its options with their defaults and its input size."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    defaults: dict[str, object] = field(default_factory=dict)
    options: ModelOptions | None = None

    @property
    def doc(self) -> str:
        """The first sentence of the builder's docstring (its first paragraph, unwrapped)."""
        paragraph = " ".join((self.builder.__doc__ or "").strip().split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    input_size: tuple[int, int, int] = (3, 224, 224),
    options: ModelOptions | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name; ``input_size`` is its default (C, H, W).

    ``options``: the builder's options and their defaults, an instance of its family's
    :class:`ModelOptions` dataclass; None: the builder's keyword parameters that have a
    default (a plain function, e.g. in a user's script). Every model also takes ``init``
    (default None), which :func:`create_model` handles, not the builder: see
    :mod:`onebit.models.init`.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if options is not None:
            defaults = asdict(options)
        else:
            params = inspect.signature(builder).parameters.values()
            defaults = {
                p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            }
        if "init" in defaults:
            raise TypeError(f"{builder.__name__}: 'init' is create_model's option, not a builder's")
        defaults["init"] = None
        entry = ModelEntry(builder.__name__, builder, input_size, defaults, options)
        _MODELS[builder.__name__] = entry
        return builder

    return deco


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an error listing close names if there is none."""
    if name not in _MODELS:
        raise UnknownNameError("model", name, _MODELS)
    return _MODELS[name]


def check_model_spec(spec: Mapping[str, object], path: str | None = None) -> ModelEntry:
    """The entry of the model ``spec`` names (``{"name": ..., **options}``, a recipe's
    ``model:`` section); an error unless the name is registered and every other key is an
    option of its builder with a valid ``method``, ``bits`` and ``init``. With ``path`` (the
    config key of ``spec``) the error is a ConfigError naming the key."""
    from onebit.quant import get_method, parse_bits

    name = spec.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"config key {path}.name is missing: name a model (see `onebit models`)")
    key = "name"
    try:
        entry = model_entry(name)
        for key in spec:
            if key != "name" and key not in entry.defaults:
                raise ConfigError(
                    f"model {name!r} has no option {key!r}; "
                    f"its options are: {', '.join(sorted(entry.defaults))}"
                )
        for key, check in (("method", get_method), ("bits", parse_bits)):
            if key in spec:
                try:
                    check(spec[key])
                except (TypeError, AttributeError) as err:
                    raise ConfigError(str(err)) from None
        for key in ("in_chans", "num_classes"):  # the options every model has: counts
            value = spec.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} {value!r} is not a positive whole number")
    except OneBitError as err:
        if path is None:
            raise
        raise ConfigError(f"config key {path}.{key}: {err}") from None
    try:
        check_init(spec.get("init"), f"{path or 'model'}.init")
    except ConfigError as err:
        raise ConfigError(f"config key {err}" if path else str(err)) from None
    return entry


def _check_model_section(spec: dict[str, object]) -> None:
    check_model_spec(spec, "model")


# name and the builder's options, passed to create_model(**config.model)
register_section("model", dict[str, Any], position=0, default=REQUIRED, check=_check_model_section)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **options: object) -> nn.Module:
    """Build the registered model ``name`` with keyword ``options`` (method, bits, ...).

    ``init`` (None: the builder's, i.e. the paper's, initialisation) re-initialises the built
    model as :func:`onebit.models.init.apply_init` says, e.g. ``init="torch"`` or
    ``init={"conv": "kaiming_fan_in", "bn_weight": 1e-8}``.

    The model remembers how it was built in ``model.onebit_spec`` (name and every option,
    defaults included), which checkpoints and exported files store to rebuild it.
    """
    entry = check_model_spec({"name": name, **options})
    init = options.pop("init", None)
    try:
        model = entry.builder(**options)
    except (TypeError, ValueError, RuntimeError) as err:  # an option of the wrong type / range
        detail = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"model {name!r} cannot be built with the options {options} ({detail})"
        ) from None
    apply_init(model, init)
    model.onebit_spec = {"name": name, "options": {**entry.defaults, **options, "init": init}}
    return model


def default_input_spec(name: str, in_chans: int | None = None) -> InputSpec | None:
    """The :class:`~onebit.data.InputSpec` a model ``name`` is built for, when no training data
    says otherwise: ImageNet's for 224x224 models, CIFAR-10's for 32x32 ones, Fashion-MNIST's
    for a 32x32 model with one input channel."""
    from onebit.data import DataConfig, dataset_input_spec

    c, h, _ = default_input_size(name, in_chans)
    if c == 3 and h >= 64:
        return dataset_input_spec(DataConfig(dataset="imagefolder", image_size=h))
    if (c, h) in ((1, 32), (3, 32)):
        return dataset_input_spec(DataConfig(dataset="fashion_mnist" if c == 1 else "cifar10"))
    return None  # no dataset onebit knows has this input


def default_input_size(name: str, in_chans: int | None = None) -> tuple[int, int, int]:
    """The (C, H, W) a model ``name`` is built for, with ``in_chans`` channels if given."""
    c, h, w = model_entry(name).input_size
    return (in_chans or c, h, w)
