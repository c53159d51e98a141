"""``export(model, path)``: a trained BNN to one bit-packed ``.onebit`` file.

What is stored (see :mod:`onebit.deploy.format` for the file layout):

* every layer whose weight is binarized stores its weight signs packed 1 bit each, per output
  channel along (kh, kw, cin), and the per-channel magnitude its binarizer gives
  (``layer.binary_weight()`` must be +-s_c per output channel: XNOR's mean |W|, IR-Net's
  power of two, 1 for sign / ReCU);
* a 1w1a layer the kernel can run (groups 1, zero padding) is ``mode="packed"``: its output is
  ``dot * out_scale + out_bias`` with the weight scale, the learned alpha, the conv bias and a
  BatchNorm that directly follows it (found by torch.fx tracing) folded into the two vectors;
* everything else is the model's state dict (fp32, or fp16 with ``fp16=True``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from onebit.data.spec import InputSpec
from onebit.deploy import format as fmt
from onebit.deploy.format import LayerDesc
from onebit.deploy.packing import pack_weight
from onebit.errors import ExportError, OneBitError
from onebit.nn import BATCHNORMS
from onebit.nn.binary import BinaryConv2d, BinaryLayer, BinaryLinear
from onebit.nn.trace import trace_graph
from onebit.quant.binarizers import sign


def binary_weight_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    """The (name, layer) pairs of ``model`` whose weight is binarized, in module order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, BinaryLayer) and m.weight_spec is not None
    ]


def geometry(layer: nn.Module) -> dict[str, Any]:
    """The shape entries of a binary layer's LayerDesc (a linear is a 1x1 conv on a 1x1 image).

    A string padding ("same"/"valid", user models only) is recorded as (0, 0): such a layer
    runs in ``mode="float"`` with the module's own padding.
    """
    if isinstance(layer, BinaryLinear):
        one = (1, 1)
        return {
            "kind": "linear",
            "in_channels": layer.in_features,
            "out_channels": layer.out_features,
            "kernel_size": one,
            "stride": one,
            "padding": (0, 0),
            "dilation": one,
            "groups": 1,
        }
    padding = layer.padding if isinstance(layer.padding, tuple) else (0, 0)
    return {
        "kind": "conv2d",
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": tuple(layer.kernel_size),
        "stride": tuple(layer.stride),
        "padding": tuple(padding),
        "dilation": tuple(layer.dilation),
        "groups": layer.groups,
    }


def describe(name: str, layer: BinaryLayer, bn: str | None = None) -> LayerDesc:
    """The LayerDesc of a binary-weight layer (``bn``: the BatchNorm folded into it)."""
    mode = "packed" if kernel_can_run(layer) else "float"
    return LayerDesc(
        name=name,
        mode=mode,
        act=layer.act_spec.name if layer.act_spec is not None else None,
        weight=layer.weight_spec.name,
        act_bias=mode == "packed" and getattr(layer, "act_bias", None) is not None,
        bn=bn if mode == "packed" else None,
        **geometry(layer),
    )


def kernel_can_run(layer: BinaryLayer) -> bool:
    """True for a 1w1a layer the xnor-popcount kernel runs: a linear, or a conv with groups 1
    and integer zero padding."""
    if layer.act_spec is None or layer.weight_spec is None:
        return False
    if isinstance(layer, BinaryConv2d):
        return (
            layer.groups == 1 and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
        )
    return True


def weight_signs_and_scale(name: str, layer: BinaryLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer.binary_weight()`` as (negative: bool, same shape as the weight; scale: fp32 [cout]).

    The binary weight must be +-s_c in each output channel c (s_c >= 0); sign(0) = +1.
    """
    wb = layer.binary_weight().detach().float().cpu()
    flat = wb.reshape(wb.shape[0], -1)
    scale = flat.abs().amax(dim=1)
    if not torch.equal(flat.abs(), scale[:, None].expand_as(flat)):
        raise ExportError(
            f"layer {name}: its binary weight is not +-scale per output channel "
            f"(weight binarizer {layer.weight_spec.name!r}); it cannot be packed"
        )
    return wb < 0, scale


def check_activation(name: str, layer: BinaryLayer) -> None:
    """The packed engine binarizes inputs as sign(x + act_bias); check the layer does the same
    in eval mode (every binarizer in onebit.quant does; a registered one might not: a ternary
    or multi-bit quantizer cannot be deployed). Checked for every layer that binarizes its
    input, packed or not: the engine rebuilds a float layer's binarizer by name."""
    cin = layer.weight.shape[1] * getattr(layer, "groups", 1)
    shape = (3, cin) if isinstance(layer, BinaryLinear) else (3, cin, 2, 2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(layer.weight.device)
    expected = x + _act_bias(layer).view(1, -1, *([1] * (x.dim() - 2)))
    if not torch.equal(layer.binary_input(x), sign(expected)):
        raise ExportError(
            f"layer {name}: activation binarizer {layer.act_spec.name!r} is not "
            "sign(x + act_bias) in eval mode, so the packed engine cannot run it"
        )


def _act_bias(layer: BinaryLayer) -> torch.Tensor:
    bias = getattr(layer, "act_bias", None)
    cin = layer.weight.shape[1] * getattr(layer, "groups", 1)
    if bias is None:
        return torch.zeros(cin, device=layer.weight.device)
    return bias.detach()


def conv_bn_pairs(model: nn.Module, layers: set[str]) -> dict[str, str]:
    """{layer name: BatchNorm name} for each BatchNorm whose only input is one of ``layers``,
    whose layer output feeds nothing else, both called once (a torch.fx trace of ``model``).

    A model fx cannot trace (data-dependent control flow) gets a warning and no folding.
    """
    try:
        graph = trace_graph(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable user code
        warnings.warn(
            f"onebit.deploy: torch.fx cannot trace {type(model).__name__} "
            f"({type(err).__name__}: {str(err)[:100]}); BatchNorm layers are not folded",
            stacklevel=3,
        )
        return {}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], BATCHNORMS):
            continue
        bn = modules[node.target]
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and src.target in layers):
            continue
        if (
            len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
            and bn.running_mean is not None
            and bn.num_features == modules[src.target].weight.shape[0]
        ):
            pairs[src.target] = node.target
    return pairs


def fold(
    layer: BinaryLayer, weight_scale: torch.Tensor, bn: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (out_scale, out_bias) such that the layer (+ BatchNorm) output is
    ``dot * out_scale + out_bias``, dot the integer +-1 dot product.

    layer: z = (s_c dot + b_c) alpha_c; BatchNorm (eval): y = (z - mu_c) g_c + beta_c with
    g_c = gamma_c / sqrt(var_c + eps). Computed in float64, stored fp32.
    """
    cout = weight_scale.numel()

    def vec(t: torch.Tensor | None, default: float) -> torch.Tensor:
        if t is None:
            return torch.full((cout,), default, dtype=torch.float64)
        return t.detach().reshape(cout).double().cpu()

    alpha = vec(layer.alpha, 1.0)
    scale = weight_scale.double() * alpha
    bias = vec(layer.bias, 0.0) * alpha
    if bn is not None:
        g = vec(bn.weight, 1.0) / torch.sqrt(vec(bn.running_var, 1.0) + bn.eps)
        bias = (bias - vec(bn.running_mean, 0.0)) * g + vec(bn.bias, 0.0)
        scale = scale * g
    return scale.float(), bias.float()


def model_spec(model: nn.Module) -> dict[str, Any]:
    """How the engine rebuilds ``model``: its registry name and options if ``create_model``
    built it and it still has that architecture, else only its class (load needs model=)."""
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    spec = getattr(model, "onebit_spec", None)
    if spec is not None:
        from onebit.models import create_model

        try:
            json.dumps(spec)
            with torch.device("meta"):
                rebuilt = create_model(spec["name"], **spec["options"])
        except (OneBitError, TypeError):
            rebuilt = None
        if rebuilt is not None and _signature(rebuilt) == _signature(model):
            return {"name": spec["name"], "options": spec["options"], "class": cls}
    return {"name": None, "options": {}, "class": cls}


def _signature(model: nn.Module) -> tuple:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bits = {n: m.bits for n, m in model.named_modules() if isinstance(m, BinaryLayer)}
    return shapes, bits


def default_spec(model: nn.Module) -> InputSpec | None:
    """The registry's input spec of a model ``create_model`` built (None for others)."""
    from onebit.models import default_input_spec

    spec = getattr(model, "onebit_spec", None)
    if not spec:
        return None
    return default_input_spec(spec["name"], spec["options"].get("in_chans"))


@torch.no_grad()
def export(
    model: nn.Module,
    path: str | Path,
    *,
    fp16: bool = False,
    input_spec: InputSpec | None = None,
    accuracy: dict[str, float] | None = None,
    imports: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (evaluated in eval mode) to ``path`` as a packed ``.onebit`` file.

    ``fp16=True`` stores the full-precision parts (state dict floats) in fp16; the packed
    layers' per-channel scale, bias and threshold stay fp32. ``input_spec``: the input the
    model was trained on (default: its registry entry's, see
    :func:`onebit.models.default_input_spec`), stored so that the deployed model can
    ``predict`` raw images. ``accuracy``: the trained model's test figures (``val_top1``,
    ...), stored for ``onebit eval`` to compare with. ``imports``: the modules that register
    the user's own binarizers / methods / models (a config's ``imports:``): ``load`` needs them
    imported before it rebuilds the model, and imports them only when the user allows it
    (``--import``, ``load(path, imports=...)``). Returns the file's header.
    ``onebit.deploy.load(path)`` runs it; for a model not built by ``onebit.create_model``,
    ``load(path, model=an_instance_of_the_same_architecture)``.
    """
    was_training = model.training
    model.eval()
    try:
        header, tensors = _build(model, fp16)
    finally:
        model.train(was_training)
    spec = input_spec or default_spec(model)
    header["input"] = None if spec is None else spec.to_json()
    if accuracy:
        header["accuracy"] = {k: float(v) for k, v in accuracy.items()}
    if imports:
        header["imports"] = list(imports)
    fmt.write(path, header, tensors)
    return header


def _build(model: nn.Module, fp16: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    binary = binary_weight_layers(model)
    packed = {name for name, layer in binary if kernel_can_run(layer)}
    pairs = conv_bn_pairs(model, packed)
    modules = dict(model.named_modules())
    state = model.state_dict()
    drop: set[str] = set()
    tensors: dict[str, torch.Tensor] = {}
    descs = []
    for name, layer in model.named_modules():
        if isinstance(layer, BinaryLayer) and layer.act_spec is not None:
            check_activation(name, layer)
    for name, layer in binary:
        desc = describe(name, layer, pairs.get(name))
        descs.append(desc)
        negative, scale = weight_signs_and_scale(name, layer)
        tensors[f"{name}.weight_bits"] = pack_weight(negative)
        if desc.mode == "float":
            tensors[f"{name}.weight_scale"] = scale
            drop.add(f"{name}.weight")
            continue
        bn = modules[desc.bn] if desc.bn else None
        tensors[f"{name}.out_scale"], tensors[f"{name}.out_bias"] = fold(layer, scale, bn)
        if desc.act_bias:
            tensors[f"{name}.act_bias"] = layer.act_bias.detach().float()
        drop |= {f"{name}.{k}" for k in layer.state_dict()}
        if bn is not None:
            drop |= {f"{desc.bn}.{k}" for k in bn.state_dict()}
    fp_dtype = torch.float16 if fp16 else torch.float32
    for key, value in state.items():
        if key not in drop:
            tensors[key] = value.to(fp_dtype) if value.is_floating_point() else value
    header = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "model": model_spec(model),
        "fp_dtype": "float16" if fp16 else "float32",
        "layers": [d.to_json() for d in descs],
        "folded": [d.bn for d in descs if d.bn is not None],
    }
    return header, tensors
