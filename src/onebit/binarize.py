"""``binarize(model, method=...)``: turn any PyTorch model into a binary one, in place."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from onebit.errors import ConfigError
from onebit.nn.binary import BinaryConv2d, BinaryLinear
from onebit.nn.factory import BinaryLayers
from onebit.nn.trace import trace_graph


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _binary_copy(layer: nn.Module, kwargs: dict[str, str | bool | None]) -> nn.Module:
    """A BinaryConv2d / BinaryLinear with the same shape, device, dtype and weights."""
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Conv2d):
        new = BinaryConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            has_bias,
            **kwargs,
            **factory,
        )
    else:
        new = BinaryLinear(layer.in_features, layer.out_features, has_bias, **kwargs, **factory)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if has_bias:
            new.bias.copy_(layer.bias)
    new.train(layer.training)
    return new


# Activations whose output is never negative: a binary layer fed by one sees sign(x) = +1.
NON_NEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
NON_NEGATIVE_FUNCTIONS = (F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.softmax)
# Operations that keep a non-negative input non-negative.
KEEPS_SIGN_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
KEEPS_SIGN_FUNCTIONS = (
    torch.flatten,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
    operator.add,
    operator.iadd,
    torch.add,
    torch.cat,
)
KEEPS_SIGN_METHODS = ("flatten", "view", "reshape", "contiguous", "add", "add_")
ACT_FIXES = {"hardtanh": nn.Hardtanh, "identity": nn.Identity}


def non_negative_inputs(model: nn.Module, layers: Iterable[str]) -> dict[str, list[str]]:
    """{layer: the activations that make its input never negative} for those of ``layers``
    (module names) whose input comes from a ReLU, ReLU6, sigmoid or softmax through pooling,
    reshapes or sums of such (traced with torch.fx; {} if the model cannot be traced). A
    module activation is named by its module name, a functional one as ``F.relu`` etc."""
    try:
        graph = trace_graph(model)
    except Exception:  # fx raises many kinds of errors on untraceable user code
        return {}
    modules = dict(model.named_modules())
    memo: dict[fx.Node, list[str] | None] = {}

    def sources(node: object) -> list[str] | None:
        """The non-negative activations ``node`` comes from, or None if it may be negative."""
        if not isinstance(node, fx.Node):
            return None if not isinstance(node, (int, float)) or node < 0 else []
        if node not in memo:
            memo[node] = None  # cycles cannot happen in a trace; this guards recursion
            memo[node] = _sources(node)
        return memo[node]

    def _sources(node: fx.Node) -> list[str] | None:
        if node.op == "call_module":
            module = modules.get(node.target)
            if isinstance(module, NON_NEGATIVE_MODULES):
                return [node.target]
            if isinstance(module, KEEPS_SIGN_MODULES):
                return sources(node.args[0])
            return None
        if node.op == "call_function" and node.target in NON_NEGATIVE_FUNCTIONS:
            return [f"F.{getattr(node.target, '__name__', 'relu')}"]
        keeps = (node.op == "call_function" and node.target in KEEPS_SIGN_FUNCTIONS) or (
            node.op == "call_method" and node.target in KEEPS_SIGN_METHODS
        )
        if not keeps:
            return None
        if node.target is torch.cat:
            parts = [sources(a) for a in node.args[0]]
        elif node.target in (operator.add, operator.iadd, torch.add, "add", "add_"):
            parts = [sources(a) for a in node.args[:2]]
        else:
            parts = [sources(node.args[0])]
        if any(p is None for p in parts):
            return None
        return sorted({name for p in parts for name in p})

    wanted, found = set(layers), {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in wanted and node.args:
            names = sources(node.args[0])
            if names:
                found[node.target] = names
    return found


def binarize(
    model: nn.Module,
    method: str = "xnor",
    bits: str = "1w1a",
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    skip: Iterable[str] = (),
    act_fix: str | None = None,
) -> nn.Module:
    """Swap every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` for a binary one, in place.

    The layers keep their weights (copied into the latent weights). As in every seed paper,
    the first conv and the last linear (in module registration order) stay full precision;
    ``keep_first`` / ``keep_last`` turn that off, ``skip`` names more layers to keep (names
    as in ``model.named_modules()``). Returns ``model``.

    Activations are left as they are, unless a layer that binarizes its input is fed by a
    ReLU (ReLU6, sigmoid, softmax): its input is never negative, sign(x) is always +1 and the
    layer's output a constant. binarize warns about it (see :func:`non_negative_inputs`);
    ``act_fix="hardtanh"`` replaces those activation modules by hardtanh (the Bi-Real / IR-Net
    block activation), ``"identity"`` removes them. A functional ``F.relu`` in a forward
    cannot be replaced: move it after the shortcut, or use a module.
    """
    if act_fix is not None and act_fix not in ACT_FIXES:
        raise ConfigError(f"binarize(act_fix={act_fix!r}): use one of {', '.join(ACT_FIXES)}")
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"binarize() takes a torch.nn.Module instance, got {type(model).__name__}; for a "
            "registered model use onebit.create_model(name, method=...)"
        )
    if isinstance(skip, str):  # one name, not its characters
        skip = (skip,)
    kwargs = BinaryLayers.of(method, bits).binary_kwargs
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in (nn.Conv2d, nn.Linear)  # exact types: already-binary layers are skipped
    ]
    keep = set(skip)
    missing = sorted(keep - {name for name, _ in layers})
    if missing:
        raise ConfigError(
            f"binarize(skip=...) names {missing[0]!r}, which is not a Conv2d/Linear of the model"
        )
    convs = [name for name, m in layers if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in layers if isinstance(m, nn.Linear)]
    if keep_first and convs:
        keep.add(convs[0])
    if keep_last and linears:
        keep.add(linears[-1])
    if kwargs["act"] is None and kwargs["weight"] is None:
        return model
    binary = [name for name, _ in layers if name not in keep]
    for name in binary:
        _replace(model, name, _binary_copy(dict(layers)[name], kwargs))
    if kwargs["act"] is not None:
        _check_activations(model, binary, act_fix)
    return model


def _check_activations(model: nn.Module, binary: list[str], act_fix: str | None) -> None:
    """Warn about (or, with ``act_fix``, replace) the activations that make binary inputs
    never negative."""
    found = non_negative_inputs(model, binary)
    modules = sorted({a for names in found.values() for a in names if not a.startswith("F.")})
    if act_fix is not None:
        for name in modules:
            _replace(model, name, ACT_FIXES[act_fix]())
        found = non_negative_inputs(model, binary)
    if not found:
        return
    layers = sorted(found)
    sources = sorted({a for names in found.values() for a in names})
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    functional = [a for a in sources if a.startswith("F.")]
    fixes = []
    if len(functional) < len(sources):
        fixes.append(
            'pass act_fix="hardtanh" (the Bi-Real / IR-Net block activation) or "identity" to '
            "replace the activation modules, or move them after the shortcut"
        )
    if functional:
        fixes.append(
            f"the functional {', '.join(functional)} in the forward cannot be replaced: move it "
            "after the shortcut or use a module"
        )
    fix = "; ".join(fixes)
    plural = "s" if len(layers) > 1 else ""
    warnings.warn(
        f"binarize: the inputs of {len(layers)} binary layer{plural} ({shown}) come from "
        f"{', '.join(sources[:4])} and are never negative, so their binary activations are "
        f"all +1 and these layers output a constant; {fix}",
        stacklevel=3,
    )
