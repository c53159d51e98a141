"""Optimizers built from a config: ``build_optimizers(model, config.optim)``.

It returns a list: a method may train different parameters with different optimizers (e.g.
Bop for binary latent weights beside Adam for the rest); the trainer steps them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from onebit.config import OptimConfig


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """One optimizer over every trainable parameter (weight decay on all of them, as the
    official IR-Net / ReCU code). Each group keeps its ``base_lr``; the trainer sets
    ``lr = base_lr * schedule`` every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        opt = torch.optim.SGD(
            params,
            cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    else:
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        opt = cls(params, cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = cfg.lr
    return [opt]
