"""``model.init``: re-initialise a built model as another code base does, on top of the
builder's own (paper) initialisation. Every registered model takes it (see
:func:`onebit.models.create_model`).

A spec is None (the builder's init), a shorthand string, or a mapping of these keys, each
optional (null: leave it as the builder set it):

- ``conv`` / ``linear``: the scheme of every ``nn.Conv2d`` / ``nn.Linear`` weight, binary
  layers included (:class:`onebit.nn.BinaryConv2d` is an ``nn.Conv2d``); every scheme but
  ``torch`` zeroes the bias. Schemes: ``torch`` (the module's ``reset_parameters()``, a
  freshly built PyTorch layer: kaiming_uniform(a=sqrt(5))), ``kaiming_fan_in`` /
  ``kaiming_fan_out`` (He-normal, N(0, 2 / fan), gain of ReLU), ``xavier_normal`` /
  ``xavier_uniform`` (Glorot, gain 1), ``uniform_small`` (U[0, 1e-3), Bi-Real's
  ``HardBinaryConv``);
- ``bn_weight``: every BatchNorm2d weight (gamma) filled with it, its bias zeroed (the ReCU /
  FIRNet ImageNet code's 1e-8; a BatchNorm1d head keeps its init, as there);
- ``bn_eps``, ``bn_momentum``: set on every BatchNorm (PyTorch's momentum convention);
- ``prelu``: every ``nn.PReLU`` slope (RPReLU's included).

Shorthands: ``torch`` is every key at PyTorch's defaults (:data:`TORCH_DEFAULTS`); a conv
scheme name alone is ``{conv: <name>}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from onebit.config import as_number
from onebit.errors import ConfigError, did_you_mean
from onebit.nn import BATCHNORMS

WEIGHT_SCHEMES: dict[str, Callable[[torch.Tensor], object] | None] = {
    "torch": None,  # the module's own reset_parameters()
    "kaiming_fan_in": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    "kaiming_fan_out": lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "uniform_small": lambda w: nn.init.uniform_(w, 0.0, 1e-3),
}
NUMBER_KEYS = ("bn_weight", "bn_eps", "bn_momentum", "prelu")
INIT_KEYS = ("conv", "linear", *NUMBER_KEYS)
TORCH_DEFAULTS: dict[str, object] = {
    "conv": "torch",
    "linear": "torch",
    "bn_weight": 1.0,
    "bn_eps": 1e-5,
    "bn_momentum": 0.1,
    "prelu": 0.25,
}
# The number keys whose values are bounded: what the bound says, and its test.
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "bn_eps": ("above 0", lambda x: x > 0),
    "bn_momentum": ("in [0, 1]", lambda x: 0 <= x <= 1),
}


def _hint(value: object, choices: tuple[str, ...], prefix: str = "") -> str:
    return did_you_mean(value, choices, lead="; did you mean ", prefix=prefix)


def _scheme(value: object, path: str) -> str | None:
    if value is None or (isinstance(value, str) and value in WEIGHT_SCHEMES):
        return value
    names = tuple(WEIGHT_SCHEMES)
    raise ConfigError(f"{path}: {value!r} is not one of {', '.join(names)}{_hint(value, names)}")


def _number(value: object, key: str, path: str) -> float | None:
    if value is None:
        return None
    number = as_number(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or math.isnan(number):
        raise ConfigError(f"{path}: {value!r} is not a number; give a float such as 1.0e-8")
    number = float(number)
    bound, ok = _RANGES.get(key, ("finite", math.isfinite))
    if not ok(number):
        raise ConfigError(f"{path}: {number!r} is not {bound}")
    return number


def check_init(spec: object, path: str = "model.init") -> dict[str, object]:
    """The full mapping (every key of :data:`INIT_KEYS`, None = leave as built) that ``spec``
    (None, a shorthand string or a mapping) stands for; a :class:`ConfigError` naming
    ``path.<key>`` and the allowed values if it is not one."""
    if spec is None:
        return dict.fromkeys(INIT_KEYS)
    if isinstance(spec, str):
        if spec == "torch":
            return dict(TORCH_DEFAULTS)
        if spec in WEIGHT_SCHEMES:
            return {**dict.fromkeys(INIT_KEYS), "conv": spec}
        names = tuple(WEIGHT_SCHEMES)
        raise ConfigError(
            f"{path}: {spec!r} is not a mapping of {', '.join(INIT_KEYS)} nor one of the "
            f"shorthands {', '.join(names)}{_hint(spec, names)}"
        )
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{path}: expected null, a shorthand such as torch or a mapping of "
            f"{', '.join(INIT_KEYS)}; got {type(spec).__name__}"
        )
    for key in spec:
        if key not in INIT_KEYS:
            raise ConfigError(
                f"{path}.{key} is unknown; the keys of {path}: {', '.join(INIT_KEYS)}"
                f"{_hint(key, INIT_KEYS, f'{path}.')}"
            )
    checked = {key: _scheme(spec.get(key), f"{path}.{key}") for key in ("conv", "linear")}
    for key in NUMBER_KEYS:
        checked[key] = _number(spec.get(key), key, f"{path}.{key}")
    return checked


def _init_weight(module: nn.Conv2d | nn.Linear, scheme: str) -> None:
    init = WEIGHT_SCHEMES[scheme]
    if init is None:
        module.reset_parameters()
        return
    init(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def apply_init(model: nn.Module, spec: object) -> nn.Module:
    """Re-initialise ``model`` in place as ``spec`` says (see the module docstring; None
    changes nothing and draws no random numbers); returns it. Modules are visited in
    ``model.modules()`` order, so the result depends only on torch's RNG state."""
    init = check_init(spec)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and init["conv"] is not None:
            _init_weight(m, init["conv"])
        elif isinstance(m, nn.Linear) and init["linear"] is not None:
            _init_weight(m, init["linear"])
        elif isinstance(m, BATCHNORMS):
            # 2-D only, as the ReCU / FIRNet code: a BatchNorm1d head keeps its init
            if (
                init["bn_weight"] is not None
                and m.weight is not None
                and m.weight.ndim == 1
                and isinstance(m, nn.BatchNorm2d)
            ):
                m.weight.fill_(init["bn_weight"])
                m.bias.zero_()
            if init["bn_eps"] is not None:
                m.eps = init["bn_eps"]
            if init["bn_momentum"] is not None:
                m.momentum = init["bn_momentum"]
        elif isinstance(m, nn.PReLU) and init["prelu"] is not None:
            m.weight.fill_(init["prelu"])
    return model
