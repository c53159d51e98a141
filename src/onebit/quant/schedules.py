"""Schedules of the quantizers' state: pure functions of the (possibly fractional) epoch."""

from __future__ import annotations

import math

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
    model: nn.Module,
    epoch: float,
    epochs: int,
    *,
    ede: tuple[float, float] = (1e-3, 10.0),
    tau: tuple[float, float] = (0.85, 0.99),
    clip: float = 1.0,
) -> dict[str, float]:
    """Set every binary layer's schedule buffers (EDE t, k; ReCU tau) for ``epoch``, and the
    clipped STE's range ``clip`` (a constant, not logged).

    Returns the values that some layer of ``model`` reads, e.g. ``{"ede_t": .., "ede_k": ..}``
    or ``{"tau": ..}``, for logging. The buffers are filled in place on their device: no host
    sync, and ``torch.compile`` sees the same tensors every epoch (no recompilation).
    """
    t, k = ede_schedule(epoch, epochs, *ede)
    values = {"t": t, "k": k, "tau": tau_schedule(epoch, epochs, *tau), "clip": clip}
    used: dict[str, float] = {}
    for module in model.modules():
        set_state = getattr(module, "set_quant_state", None)
        if set_state is not None:
            for name in set_state(**values):
                used[{"t": "ede_t", "k": "ede_k"}.get(name, name)] = values[name]
    return used
