"""Schedules of the quantizers' state: pure functions of the (possibly fractional) epoch."""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn


def ede_schedule(epoch: float, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """IR-Net's Error Decay Estimator schedule.

    t = 10^(log10 t_min + (log10 t_max - log10 t_min) * e / E), k = max(1 / t, 1).
    Official values: CIFAR ResNet-20 t_min 1e-3, t_max 10; ImageNet / mmcls hook 0.1, 10.
    Source: Qin et al. 2020 (IR-Net), official CIFAR ``trainer.py`` (``Log_UP``).
    """
    lo, hi = math.log10(t_min), math.log10(t_max)
    t = 10 ** (lo + (hi - lo) * epoch / epochs)
    return t, max(1 / t, 1.0)


def tau_schedule(epoch: float, epochs: int, tau_min: float, tau_max: float) -> float:
    """ReCU's exponential tau schedule.

    tau(e) = tau_min + (tau_max - tau_min) * (exp(e / E) - 1) / (exp(1) - 1).
    Recipe: tau_min 0.85, tau_max 0.99. Source: Xu et al. 2021 (ReCU), official ``cpt_tau``.
    """
    return tau_min + (tau_max - tau_min) * (math.exp(epoch / epochs) - 1) / (math.e - 1)


def set_schedule_state(
    model: nn.Module, epoch: float, epochs: int, quant_config: Any = None
) -> dict[str, Any]:
    """Set the state of every binarizer ``model`` uses for (fractional) ``epoch`` of ``epochs``.

    Each binarizer's schedule computes its values once, from its options in ``quant_config``
    (the config's ``quant:`` section, a :class:`onebit.quant.QuantConfig`; None: defaults), and
    every binary layer that uses it takes them: tensor state (EDE t, k; ReCU tau) is filled
    in place on its device (no host sync, and ``torch.compile`` sees the same tensors every
    epoch), constants (the clipped STE's range) are set as Python numbers.

    Returns the values the binarizers log, under their log names, e.g. ``{"tau": ..}`` or
    ``{"ede_t": .., "ede_k": ..}``; ``{}`` for a model without binary layers.
    """
    values: dict[tuple[str, str], dict[str, Any]] = {}
    logged: dict[str, Any] = {}
    for module in model.modules():
        for spec in getattr(module, "quant_binarizers", ()):
            key = (spec.kind, spec.name)
            if key not in values:
                values[key] = spec.state_at(epoch, epochs, quant_config)
                logged.update((spec.log[n], v) for n, v in values[key].items() if n in spec.log)
            module.set_quant_state(spec.kind, **values[key])
    return logged
