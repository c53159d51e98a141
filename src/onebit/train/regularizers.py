"""What a phase does to the binary layers' latent weights besides the optimizer step.

- **clamp**: w <- clamp(w, -1, 1) after every step (BNEW phase 1; the STE baseline);
- **BNEW**: the concave regulariser R(w) = -||w||^2 as a proximal step after every step,
  w <- clamp(w - reg * dR/dw, -1, 1) = clamp(w + 2 reg w, -1, 1), with
  reg = min(reg0 (e + 1) / E, 1) in epoch e of E; it drives every weight to -1 or +1;
- **freeze**: at the start of a phase, w <- the layer's binarized weight (sign(w), or
  alpha_c sign(w) for ``xnor``), and w stops training.

``latent.order: before_step`` runs clamp and prox between the backward pass and the optimizer
step instead (BNEW's CIFAR ``binary_main.py``: backward, ``reg.post_update()``, step), so the
gradient taken at the weights before the prox is applied to the weights after it, and the
next forward pass sees unclamped weights.

The techniques that apply them in the loop are in :mod:`onebit.train.techniques`
(``LatentClamp``, ``BnewProx``, ``LatentFreeze``).

Source: Paren & Poudel 2022 (BNEW, "Training Binarized Neural Networks the Easy Way"),
Alasdair-P/bnew ``prox.py`` (``convex_hull``, ``u_reg``, ``binary_freeze``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from onebit.config import Bool, Float, Int, register_section, section
from onebit.errors import ConfigError
from onebit.nn import is_binary


@section
class BnewConfig:
    """BNEW's concave regulariser as a proximal step (reg0, and the ramp length E)."""

    reg: Float = Field(1e-4, ge=0.0)
    epochs: Int | None = Field(None, ge=1)  # E of reg = min(reg0 (e + 1) / E, 1); null: lr's


@section
class LatentConfig:
    """What happens to the binary layers' latent weights besides the optimizer step."""

    clamp: Bool = False  # clamp to [-1, 1] after every step
    center: Bool = False  # XNOR-Net: subtract the mean over input channels (before the clamp)
    bnew: BnewConfig | None = None  # the BNEW proximal step after every step
    freeze: Bool = False  # at the phase start: replace by the binarized weights, stop training
    # clamp / prox after the optimizer step, or between the backward pass and the step
    # (BNEW's CIFAR binary_main.py / dist_main.py; its ImageNet code steps first)
    order: Literal["after_step", "before_step"] = "after_step"


register_section("latent", LatentConfig, position=80)


def binary_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every binary layer: a BinaryConv2d / BinaryLinear that binarizes
    its input or its weight. These are the weights a 1w1a twin stores in one bit; the first
    conv, the last linear and full-precision shortcut convs are not among them (as BNEW's
    ``select_binary_params``)."""
    return [
        (f"{name}.weight" if name else "weight", m.weight)
        for name, m in model.named_modules()
        if is_binary(m)
    ]


def bnew_regularizer(w: torch.Tensor) -> torch.Tensor:
    """BNEW's concave regulariser R(w) = -||w||^2 = -sum w^2 (its gradient is -2w)."""
    return -(w * w).sum()


def bnew_reg(epoch: int, epochs: int, reg0: float) -> float:
    """The regularisation weight of epoch ``epoch`` (0-based) of E: min(reg0 (e + 1) / E, 1)."""
    return min(reg0 * (epoch + 1) / epochs, 1.0)


@torch.no_grad()
def bnew_prox_(weights: list[torch.Tensor], reg: float) -> None:
    """The proximal step of R with step ``reg``, in place: w <- clamp(w + 2 reg w, -1, 1)."""
    torch._foreach_mul_(weights, 1.0 + 2.0 * reg)
    clamp_(weights)


@torch.no_grad()
def center_(weights: list[torch.Tensor]) -> None:
    """w <- w - mean(w over dim 1) in place: each filter's weights centred over its input
    channels at every kernel position (a linear layer's rows over their inputs), XNOR-Net's
    ``meancenterConvParams``."""
    for w in weights:
        w.sub_(w.mean(dim=1, keepdim=True))


@torch.no_grad()
def clamp_(weights: list[torch.Tensor]) -> None:
    """w <- clamp(w, -1, 1) in place (the projection onto the convex hull of {-1, +1})."""
    torch._foreach_clamp_min_(weights, -1.0)
    torch._foreach_clamp_max_(weights, 1.0)


@torch.no_grad()
def freeze_binary_(model: nn.Module) -> int:
    """Replace every binary layer's latent weight by its binarized value (the layer's weight
    binarizer: sign(w), or alpha_c sign(w) for ``xnor``) and stop its gradient. Returns the
    number of layers frozen; a binary layer without a weight binarizer is a ConfigError (the
    phase must binarize weights: bits 1w1a or 1w32a)."""
    count = 0
    for name, m in model.named_modules():
        if not is_binary(m):
            continue
        if m.weight_spec is None:
            raise ConfigError(
                f"latent.freeze: layer {name} does not binarize its weight in this phase; "
                "set model.bits to 1w1a (or 1w32a) in the phase that freezes"
            )
        m.weight.copy_(m.binary_weight())
        m.weight.requires_grad_(False)
        count += 1
    return count
