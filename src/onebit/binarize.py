"""``binarize(model, method=...)``: turn any PyTorch model into a binary one, in place."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from onebit.errors import ConfigError
from onebit.nn.binary import BinaryConv2d, BinaryLinear
from onebit.nn.factory import BinaryLayers


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


def binarize(
    model: nn.Module,
    method: str = "xnor",
    bits: str = "1w1a",
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    skip: Iterable[str] = (),
) -> nn.Module:
    """Swap every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` for a binary one, in place.

    The layers keep their weights (copied into the latent weights). As in every seed paper,
    the first conv and the last linear (in module registration order) stay full precision;
    ``keep_first`` / ``keep_last`` turn that off, ``skip`` names more layers to keep (names
    as in ``model.named_modules()``). Only the layers change: activations such as ReLU are
    left as they are. Returns ``model``.
    """
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
    for name, layer in layers:
        if name not in keep:
            _replace(model, name, _binary_copy(layer, kwargs))
    return model
