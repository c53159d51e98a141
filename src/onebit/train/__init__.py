"""Training: the one loop (:class:`Trainer`), its schedules, optimizers, losses, checkpoints.

from onebit.config import load_config
from onebit.train import RunDir, Trainer
Trainer(load_config("configs/fmnist/resnet20_recu.yaml"), RunDir("runs/x")).fit()
model, config = onebit.train.load_model("runs/x")

A training technique of your own: subclass ``Technique``, ``@register_technique`` it
(docs/extending.md).
"""

from onebit.train.checkpoint import load_model
from onebit.train.schedules import apply_quant_schedule, lr_at, lr_factor
from onebit.train.techniques import Technique, register_technique
from onebit.train.trainer import RunDir, Trainer, evaluate, resolve_device

__all__ = [
    "RunDir",
    "Technique",
    "Trainer",
    "apply_quant_schedule",
    "evaluate",
    "load_model",
    "lr_at",
    "lr_factor",
    "register_technique",
    "resolve_device",
]
