"""Binarization methods: the recipe a name like ``"irnet"`` stands for.

A method fixes the activation binarizer, the weight binarizer (with its scaling) and the block
activation the paper's architecture uses between binary convolutions. ``bits`` then switches
either binarizer off (``"1w32a"``: binary weights, real activations; ``"32w32a"``: none).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from onebit.errors import ConfigError, UnknownNameError
from onebit.quant.registry import binarizer

BITS = ("1w1a", "1w32a", "32w1a", "32w32a")


def parse_bits(bits: str) -> tuple[int, int]:
    """``"1w1a"`` -> (weight bits, activation bits) = (1, 1)."""
    if bits not in BITS:
        raise ConfigError(f"bits {bits!r} is not one of {', '.join(BITS)}")
    w, a = bits[:-1].split("w")
    return int(w), int(a)


@dataclass(frozen=True)
class Method:
    """A binarization recipe: binarizers, and the block activation it implies."""

    name: str
    act: str | None
    weight: str | None
    block_act: str
    paper: str
    scale: bool | None = None  # a learnable per-channel output scale; None: the binarizer's

    def layer_kwargs(self, bits: str = "1w1a") -> dict[str, str | bool | None]:
        """``act=`` / ``weight=`` / ``scale=`` arguments of a binary layer for these ``bits``.

        A method with ``scale=True`` keeps its learnable scale whatever the bits, so that a
        32w1a phase and the 1w1a phase after it have the same parameters."""
        w_bits, a_bits = parse_bits(bits)
        return {
            "act": self.act if a_bits == 1 else None,
            "weight": self.weight if w_bits == 1 else None,
            "scale": self.scale,
        }


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    act: str | None,
    weight: str | None,
    block_act: str,
    paper: str,
    scale: bool | None = None,
) -> Method:
    """Register the method ``name``: activation binarizer ``act`` and weight binarizer
    ``weight`` (registered names, or None for full precision), the block activation the
    paper's architecture uses between binary convs (``onebit.nn.ACTIVATION_LAYERS``), the
    paper, and ``scale`` (a learnable per-channel output scale: True/False, or None: the
    weight binarizer's ``learned_scale``). Models and configs then accept ``method=name``.
    Registering a name again replaces it (with a warning). Returns the method.
    """
    for kind, binarizer_name in (("act", act), ("weight", weight)):
        if binarizer_name is not None:
            binarizer(kind, binarizer_name)  # an error naming the registered ones
    if name in METHODS:
        warnings.warn(f"replacing the registered method {name!r}", stacklevel=2)
    METHODS[name] = Method(name, act, weight, block_act, paper, scale)
    return METHODS[name]


def unregister_method(name: str) -> None:
    """Remove the method ``name``."""
    get_method(name)  # an error naming the registered ones if there is none
    del METHODS[name]


def get_method(name: str) -> Method:
    """The method called ``name`` (see :data:`METHODS`)."""
    if name not in METHODS:
        raise UnknownNameError("method", name, METHODS)
    return METHODS[name]


register_method("fp", None, None, "relu", "full-precision twin")
register_method("ste", "ste", "sign", "hardtanh", "BNN, Courbariaux et al. 2016")
register_method("xnor", "ste", "xnor", "hardtanh", "XNOR-Net, Rastegari et al. 2016")
register_method(
    "xnor_exact",
    "ste",
    "xnor_exact",
    "hardtanh",
    "XNOR-Net with the exact weight gradient through alpha, Rastegari et al. 2016",
)
register_method("bireal", "approx_sign", "xnor", "identity", "Bi-Real Net, Liu et al. 2018")
register_method(
    "bireal_caffe",
    "approx_sign",
    "magnitude_aware",
    "identity",
    "Bi-Real Net, Caffe recipe (magnitude-aware weight gradient), Liu et al. 2018",
)
register_method("irnet", "ede", "irnet", "hardtanh", "IR-Net, Qin et al. 2020")
register_method("recu", "recu", "recu", "hardtanh", "ReCU, Xu et al. 2021")
register_method("reactnet", "rsign", "xnor", "rprelu", "ReActNet, Liu et al. 2020")
register_method("real2binary", "ste", "sign", "prelu", "Real-to-Binary, Martinez et al. 2020")
register_method("bnew", "rsign", "sign", "rprelu", "BNEW, Paren & Poudel 2022", scale=True)
