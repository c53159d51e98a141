"""Optimizers: Bop and BMD for binary weights, and ``build_optimizers(model, config.optim)``.

``build_optimizers`` returns a list: with ``optim.binary`` the binary layers' latent weights
get their own optimizer (Bop, BMD; :func:`build_binary_optimizer`, built by the
``BinaryOptimizer`` technique) beside the usual one for every other parameter; the trainer
steps them all and sets every group's ``lr = base_lr * schedule`` each step.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from onebit.config import Bool, Float, Str, kinds, register_section, section
from onebit.errors import ConfigError
from onebit.nn import BATCHNORMS
from onebit.quant import sign

Params = Iterable[torch.Tensor] | Iterable[dict]


@section
class BinaryOptimConfig:
    """A second optimizer for the binary layers' latent weights (Bop, BMD); every other
    parameter keeps ``optim.name``. Formulas in :mod:`onebit.train.optim`."""

    KIND: ClassVar[str] = "name"
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "bop": ("gamma", "threshold"),
        "bmd": ("lr", "beta_growth", "beta_max", "form"),
    }
    name: Literal["bop", "bmd"] = "bop"
    gamma: Float = Field(1e-4, ge=0.0)  # Bop adaptivity rate; follows the lr
    threshold: Float = Field(1e-8, ge=0.0)  # Bop flip threshold
    lr: Float | None = Field(None, ge=0.0)  # BMD Adam step; null: optim.lr
    beta_growth: Float = Field(1.01, ge=1.0)  # BMD: beta = beta_growth ** e
    beta_max: Float = Field(1e35, ge=1.0)
    form: Literal["dual", "primal"] = "dual"  # MD-tanh-S / MD-tanh


BinaryOptimizers = kinds(BinaryOptimConfig)


@section
class OptimConfig:
    """The optimizer(s) of the trainable parameters."""

    KIND: ClassVar[str] = "name"
    OWN: ClassVar[dict[str, tuple[str, ...]]] = {
        "sgd": ("momentum", "nesterov"),
        "adam": ("betas",),
        "adamw": ("betas",),
    }
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Float = Field(0.1, ge=0.0, le=1e4)
    momentum: Float = Field(0.9, ge=0.0)
    weight_decay: Float = Field(1e-4, ge=0.0)
    nesterov: Bool = False
    betas: list[Float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    decay: Literal["all", "conv", "no_norm"] = "all"  # which get weight decay
    # or: shell patterns over parameter names; only the matching ones get weight decay
    decay_filter: list[Str] | None = None
    train: Literal["all", "batchnorm"] = "all"  # which parameters train
    binary: BinaryOptimizers | None = None


def _check_decay(optim: OptimConfig) -> None:
    if optim.decay_filter is not None and optim.decay != "all":
        raise ConfigError(
            f"config keys optim.decay ({optim.decay}) and optim.decay_filter both say "
            "which parameters get weight decay; keep one"
        )


register_section("optim", kinds(OptimConfig), position=30, check=_check_decay)


class Bop(torch.optim.Optimizer):
    """Bop, the latent-free optimizer for binary weights: flip a weight when the moving
    average of its gradient agrees with it in sign and exceeds a threshold.

        m <- m + gamma (g - m)
        w <- -w  where |m| > threshold and sign(m) == sign(w)     (w in {-1, +1})

    The weights are set to sign(w) of the values given (sign(0) = +1). ``gamma`` is kept as
    the param group's ``lr``, so a learning-rate schedule scales it (as Larq's schedulable
    gamma, and BNEW's linear decay of it). Defaults are Larq's (the original code used
    gamma 1e-2, threshold 1e-7).
    Source: Helwegen et al. 2019 (NeurIPS), "Latent Weights Do Not Exist"; larq
    ``optimizers.Bop``.
    """

    def __init__(self, params: Params, gamma: float = 1e-4, threshold: float = 1e-8):
        super().__init__(params, {"lr": gamma, "threshold": threshold})
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.copy_(sign(p))
                    self.state[p]["momentum"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p]["momentum"]
                m.lerp_(p.grad, group["lr"])  # m + gamma (g - m)
                # for w in {-1, +1}: m w > threshold  <=>  |m| > threshold, sign(m) == sign(w)
                p.copy_(torch.where(m * p > group["threshold"], -p, p))
        return loss


class BMD(torch.optim.Optimizer):
    """Binary mirror descent: Adam in the mirror (dual) space of the map w = tanh(beta u).

    The forward pass uses w (the parameter); g = dL/dw. With the Adam step
    s = lr / (1 - b1^t) * m_t / (sqrt(v_t / (1 - b2^t)) + eps) of g:

    - ``form="dual"`` (MD-tanh-S, BNEW's BMD baseline): keep u; u <- u - s; w <- tanh(beta u);
    - ``form="primal"`` (MD-tanh, the update written in w):
      w <- (E - 1) / (E + 1), E = (1 + w) / (1 - w) * exp(-2 beta s)   (1e-20 guards the
      divisions, as md-bnn), which equals the dual step while beta is constant.

    Both start from w = tanh(beta u0), u0 the values given. :meth:`set_beta` changes beta
    (the dual form re-projects w = tanh(beta u)). As beta grows, w -> sign(u).
    Source: Ajanthan et al. 2021 (AISTATS), "Mirror Descent View for Neural Network
    Quantization", kartikgupta-at-anu/md-bnn (``tanh_projn.py`` with --full-ste,
    ``optimizers/MDAadam.py``); Alasdair-P/bnew ``prox.py`` ``mirror_binary``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        beta: float = 1.0,
        form: str = "dual",
    ):
        if form not in ("dual", "primal"):
            raise ValueError(f"BMD form must be 'dual' or 'primal', got {form!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "beta": beta})
        self.form = form
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state[p]
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if form == "dual":
                        state["u"] = p.detach().clone()
                    p.copy_(torch.tanh(group["beta"] * p))

    @torch.no_grad()
    def set_beta(self, beta: float) -> None:
        """Set beta in every group (the dual form re-projects w = tanh(beta u))."""
        for group in self.param_groups:
            group["beta"] = beta
            if self.form == "dual":
                for p in group["params"]:
                    p.copy_(torch.tanh(beta * self.state[p]["u"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                s = m / denom * (group["lr"] / (1 - beta1**t))
                if self.form == "dual":
                    u = state["u"]
                    u.sub_(s)
                    p.copy_(torch.tanh(group["beta"] * u))
                else:
                    e = (1 + p) / (1 - p + 1e-20) * torch.exp(-2 * group["beta"] * s)
                    p.copy_((e - 1) / (e + 1 + 1e-20))
        return loss


def bmd_beta(epoch: int, growth: float, beta_max: float) -> float:
    """BMD's annealing: beta = min(growth^epoch, beta_max) (BNEW: growth 1.01 per epoch)."""
    return min(growth**epoch, beta_max)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, BATCHNORMS)


def set_trainable(model: nn.Module, train: str) -> None:
    """``optim.train``: ``all`` leaves every parameter trainable; ``batchnorm`` stops the
    gradient of every parameter that is not a BatchNorm's (Bi-Real's BN retraining)."""
    if train == "all":
        return
    for module in model.modules():
        if not _is_norm(module):
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)


def _decay_groups(
    model: nn.Module,
    params: list[nn.Parameter],
    decay: str,
    weight_decay: float,
    decay_filter: list[str] | None = None,
) -> list[dict]:
    """``optim.decay``: which parameters get weight decay. ``all`` (IR-Net, ReCU CIFAR);
    ``conv``: 4-D (conv) weights only (ReActNet's two groups); ``no_norm``: all but
    BatchNorm's (mmcls ``norm_decay_mult=0``). ``optim.decay_filter`` (shell patterns over
    ``named_parameters()`` names) replaces it: only the parameters whose name matches one of
    them are decayed, e.g. ``["*conv*", "*fc*"]`` for the ReCU / FIRNet ImageNet code, which
    decays the parameters whose name contains "conv" or "fc" (not BatchNorm, not the
    ``move`` biases, not the ``downsample`` / ``shortcut`` conv)."""
    if decay_filter is not None:
        names = {id(p): name for name, p in model.named_parameters()}
        if not any(fnmatch.fnmatchcase(n, pat) for n in names.values() for pat in decay_filter):
            sample = ", ".join(list(names.values())[:3])
            raise ConfigError(
                f"config key optim.decay_filter: {decay_filter} matches no parameter name of "
                f"the model (names look like {sample}); see `onebit summary MODEL`"
            )
        decayed = {
            id(p)
            for p in params
            if any(fnmatch.fnmatchcase(names.get(id(p), ""), pat) for pat in decay_filter)
        }
    elif decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    elif decay == "conv":
        decayed = {id(p) for p in params if p.ndim == 4}
    else:
        norm = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(False)}
        decayed = {id(p) for p in params if id(p) not in norm}
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_binary_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """``cfg.binary``'s optimizer (Bop or BMD) of the binary layers' latent weights ``params``
    (BMD: Adam's ``cfg.betas``; its lr is ``cfg.binary.lr``, else ``cfg.lr``)."""
    b = cfg.binary
    if b.name == "bop":
        return Bop(params, gamma=b.gamma, threshold=b.threshold)
    lr = cfg.lr if b.lr is None else b.lr
    return BMD(params, lr=lr, betas=tuple(cfg.betas), form=b.form)


def build_optimizers(
    model: nn.Module, cfg: OptimConfig, others: Iterable[torch.optim.Optimizer] = ()
) -> list[torch.optim.Optimizer]:
    """``cfg.name``'s optimizer of every trainable parameter of ``model`` that none of
    ``others`` holds (the techniques' own, e.g. Bop for the latent weights), followed by
    ``others``. Weight decay as ``cfg.decay`` / ``cfg.decay_filter``. Each group keeps its
    ``base_lr``; the trainer sets ``lr = base_lr * schedule`` every step."""
    others = list(others)
    held = {id(p) for opt in others for group in opt.param_groups for p in group["params"]}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in held]
    optimizers: list[torch.optim.Optimizer] = []
    if rest:
        groups = _decay_groups(model, rest, cfg.decay, cfg.weight_decay, cfg.decay_filter)
        if cfg.name == "sgd":
            opt = torch.optim.SGD(groups, cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        else:
            cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
            opt = cls(groups, cfg.lr, betas=tuple(cfg.betas))
        optimizers.append(opt)
    optimizers += others
    if not optimizers:
        raise ConfigError("no parameter is trainable in this phase: check optim.train and latent")
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers
