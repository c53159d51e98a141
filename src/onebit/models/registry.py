"""Model registry: ``@register_model`` on a builder, then ``create_model(name, **options)``."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn as nn

if TYPE_CHECKING:
    from onebit.data import InputSpec

from onebit.errors import ConfigError, UnknownNameError
from onebit.models.init import apply_init, check_init


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and what it needs to know about its inputs."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    defaults: dict[str, object] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """The first sentence of the builder's docstring (its first paragraph, unwrapped)."""
        paragraph = " ".join((self.builder.__doc__ or "").strip().split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    input_size: tuple[int, int, int] = (3, 224, 224),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name; ``input_size`` is its default (C, H, W).

    Every model also takes ``init`` (default None), which :func:`create_model` handles, not
    the builder: see :mod:`onebit.models.init`.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(builder).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        if "init" in defaults:
            raise TypeError(f"{builder.__name__}: 'init' is create_model's option, not a builder's")
        defaults["init"] = None
        _MODELS[builder.__name__] = ModelEntry(builder.__name__, builder, input_size, defaults)
        return builder

    return deco


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an error listing close names if there is none."""
    if name not in _MODELS:
        raise UnknownNameError("model", name, _MODELS)
    return _MODELS[name]


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
    entry = model_entry(name)
    unknown = sorted(set(options) - set(entry.defaults))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {unknown[0]!r}; "
            f"its options are: {', '.join(sorted(entry.defaults))}"
        )
    init = options.pop("init", None)
    check_init(init)
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
    from onebit.config import DataConfig
    from onebit.data import dataset_input_spec

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
