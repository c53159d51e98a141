"""``export(model, path)``: a trained BNN to one self-describing ``.onebit`` graph file.

The file (:mod:`onebit.deploy.graph`, format 2) is the network as a list of ops the C runtime
runs without Python. :func:`export_graph` traces the model with torch.fx (binary layers,
BatchNorms and onebit.nn blocks as leaves), runs it once on a batch of its input spec's shape
to learn every value's shape, and turns each call the output depends on into ops:

========================================================  ======================================
model call                                                ops
========================================================  ======================================
BinaryConv2d / BinaryLinear 1w1a (sign(x + b) input,      bconv2d: weight signs packed, weight
groups 1, zero padding)                                   scale x alpha, bias and a BatchNorm
                                                          read only by it folded into
                                                          out_scale / out_bias; RSign's act_bias
BinaryConv2d / BinaryLinear 1w32a                         conv2d / linear, float weight
                                                          sign x scale x alpha
nn.Conv2d, nn.Linear                                      conv2d, linear
BatchNorm (not folded)                                    affine
ReLU, F.relu, Sigmoid, Hardtanh / ReLU6, F.hardtanh       relu, sigmoid, hardtanh
PReLU, LeakyReLU, F.leaky_relu; LeakyClip                 prelu; leaky_clip
RPReLU; LearnableBias                                     affine, prelu, affine; affine
ChannelShuffle; its .cat, stack(dim 2) + flatten(1, 2)   channel_shuffle; concat + shuffle
ChannelPadShortcut                                        [avgpool2d] + subsample_pad
LearnedRescale; ChannelGate                               rescale_hw; global_avgpool, linear,
                                                          relu, linear, sigmoid
Max/AvgPool2d, F.max/avg_pool2d; AdaptiveAvgPool2d(1)     maxpool2d, avgpool2d; global_avgpool
flatten, Flatten, view/reshape to (N, CHW)                flatten (nothing on a 1x1 map)
add (+, torch.add, Tensor.add); mul                       add; mul (same shape or (N, C, 1, 1))
x + number / x * number or a per-channel constant         affine
torch.cat(dim=1), Tensor.repeat(1, r, 1, 1)               concat (chained past 4 inputs)
x[:, a:b, ::s, ::s], split / chunk of channels, F.pad     subsample_pad (negative pads crop)
of channels
Identity, Dropout, contiguous, x[:, :, None, None]        nothing (the same value)
========================================================  ======================================

Anything else is an ExportError naming the op and the layer that calls it.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from onebit.deploy.format import check_export_target
from onebit.deploy.graph import VERSION, InputRecord, Node, read_graph, write_graph
from onebit.deploy.packing import pack_weight
from onebit.errors import ExportError, OneBitError
from onebit.input_spec import InputSpec
from onebit.models._common import grad_like_input
from onebit.nn import (
    BATCHNORMS,
    ChannelGate,
    ChannelPadShortcut,
    ChannelShuffle,
    LeakyClip,
    LearnableBias,
    LearnedRescale,
    RPReLU,
)
from onebit.nn.binary import BinaryConv2d, BinaryLayer, BinaryLinear
from onebit.nn.exact_conv import weight_scale
from onebit.nn.layers import interleave_channels
from onebit.nn.trace import trace_graph
from onebit.quant.binarizers import sign

# --------------------------------------------------------------------------- binary layers
# What a binary layer computes, checked before it becomes a bconv2d node.


def weight_signs_and_scale(name: str, layer: BinaryLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer.binary_weight()`` as (negative: bool, same shape as the weight; scale: fp32 [cout]).

    The binary weight must be +-s_c in each output channel c (s_c >= 0); sign(0) = +1.
    """
    wb = layer.binary_weight().detach().float().cpu()
    scale = weight_scale(wb)
    if scale is None:
        raise ExportError(
            f"layer {name}: its binary weight is not +-scale per output channel "
            f"(weight binarizer {layer.weight_spec.name!r}); it cannot be packed"
        )
    return wb < 0, scale


def check_activation(name: str, layer: BinaryLayer) -> None:
    """The runtime binarizes inputs as sign(x + act_bias); check the layer does the same
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
            "sign(x + act_bias) in eval mode, so the runtime cannot run it"
        )


def check_binarizers(model: nn.Module) -> None:
    """Every layer that binarizes its input does it as sign(x + act_bias), and every 1w1a
    layer's binary weight is +-scale per output channel (else an ExportError naming them)."""
    for name, layer in model.named_modules():
        if isinstance(layer, BinaryLayer) and layer.act_spec is not None:
            check_activation(name, layer)
            if layer.weight_spec is not None:
                weight_signs_and_scale(name, layer)


def _act_bias(layer: BinaryLayer) -> torch.Tensor:
    bias = getattr(layer, "act_bias", None)
    cin = layer.weight.shape[1] * getattr(layer, "groups", 1)
    if bias is None:
        return torch.zeros(cin, device=layer.weight.device)
    return bias.detach()


def fold(
    layer: BinaryLayer, weight_scale: torch.Tensor, bn: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (out_scale, out_bias) such that the layer (+ BatchNorm) output is
    ``dot * out_scale + out_bias``, dot the integer +-1 dot product.

    layer: z = (s_c dot + b_c) alpha_c; BatchNorm (eval): y = z g_c + shift_c
    (:func:`batchnorm_affine`). Computed in float64, stored fp32.
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
        g, shift = batchnorm_affine(bn)
        bias = bias * g + shift
        scale = scale * g
    return scale.float(), bias.float()


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as y = x * g + shift per channel, in float64:
    g_c = gamma_c / sqrt(var_c + eps), shift_c = beta_c - mu_c g_c."""
    c = bn.num_features

    def vec(t: torch.Tensor | None, default: float) -> torch.Tensor:
        if t is None:
            return torch.full((c,), default, dtype=torch.float64)
        return t.detach().reshape(c).double().cpu()

    g = vec(bn.weight, 1.0) / torch.sqrt(vec(bn.running_var, 1.0) + bn.eps)
    return g, vec(bn.bias, 0.0) - vec(bn.running_mean, 0.0) * g


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


# --------------------------------------------------------------------------- the graph


@dataclass
class _Pieces:
    """A split or chunk of a value along the channels: ``ranges[i]`` is piece i."""

    value: int
    channels: int
    ranges: list[tuple[int, int]]


@dataclass
class _Stacked:
    """``torch.stack(values, dim=2)``, waiting for the ``flatten(1, 2)`` that makes it a
    channel interleave (ChannelShuffle.cat)."""

    values: list[int]


@dataclass
class _Constant:
    """A traced value that is not a tensor of the network (a size, a number), or a tensor
    attribute of the model (get_attr)."""

    value: Any


_Env = int | _Pieces | _Stacked | _Constant
_DEFAULT_OP = "the runtime has no such op"


def _meta(value: Any) -> Any:
    """A recorded output: tensors become meta tensors (shape and dtype, no data)."""
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return [_meta(v) for v in value]
    return value


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(_has_tensor(v) for v in value)


class _Recorder(fx.Interpreter):
    """Runs the traced model once and keeps every node's output as :func:`_meta` gives it."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.seen: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.seen[n] = _meta(out)
        return out


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return value[0], value[0]
    return int(value[0]), int(value[1])


def _graph_shape(t: Any) -> tuple[int, int, int, int] | None:
    """The graph value of a traced tensor: (N, C, H, W) as is, (N, C) as (N, C, 1, 1)."""
    if not isinstance(t, torch.Tensor) or t.dim() not in (2, 4):
        return None
    return tuple(t.shape) if t.dim() == 4 else (*t.shape, 1, 1)


def _numpy(t: torch.Tensor | np.ndarray | float | list) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return t.numpy() if t.dtype == torch.int64 else t.float().numpy()
    return np.asarray(t, dtype=np.float32)


def _function_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    for prefix, namespace in (("torch", torch), ("F", F), ("operator", operator)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    return getattr(target, "__qualname__", name)


_REQUIRED = object()


class _GraphBuilder:
    """Turns a traced model into graph nodes and tensors, one traced call at a time.

    Each handler takes the fx node (and the module of a call_module) and returns what the
    node's output is in the graph: a value id, or a :class:`_Pieces` / :class:`_Stacked` /
    :class:`_Constant` that a later node consumes. A handler that returns an input's value
    id adds no op (Identity, Dropout, a flatten of a 1x1 map, a BatchNorm folded before).
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, seen: dict[fx.Node, Any]):
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = graph
        self.seen = seen
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.env: dict[fx.Node, _Env] = {}
        self.folded: dict[fx.Node, int] = {}  # BatchNorm call -> the bconv2d it is folded into
        self.packed: list[str] = []  # binary layers run as bconv2d
        self.float_binary: list[str] = []  # binary-weight layers run as float conv2d / linear
        self.bn_folded: list[str] = []
        self.input = next(n for n in graph.nodes if n.op == "placeholder")

    # ----------------------------------------------------------------- walking
    def build(self) -> int:
        """Convert every node the output depends on; returns the number of classes."""
        output = next(n for n in self.graph.nodes if n.op == "output")
        live = self._live(output)
        for node in self.graph.nodes:
            if node in live and node.op != "output":
                self.env[node] = self._convert(node)
        result = output.args[0]
        shape = _graph_shape(self.seen.get(result)) if isinstance(result, fx.Node) else None
        if shape is None or shape[2:] != (1, 1):
            raise ExportError(
                f"cannot export {type(self.model).__name__}: its output must be one tensor of "
                "logits (N, classes)"
            )
        value = self.value(result, output)
        if value != len(self.nodes) or value == 0:
            raise ExportError(
                f"cannot export {type(self.model).__name__}: its output is not computed by "
                "its last op"
            )
        return shape[1]

    def _live(self, output: fx.Node) -> set[fx.Node]:
        live, todo = set(), [output]
        while todo:
            node = todo.pop()
            if node not in live:
                live.add(node)
                todo += node.all_input_nodes
        return live

    def _convert(self, node: fx.Node) -> _Env:
        if node.op == "placeholder":
            if node is not self.input:
                self.fail(node, f"input {node.target!r}", "the graph takes one input")
            return 0
        if node.op == "get_attr":
            return _Constant(_attr(self.model, node.target))
        if not _has_tensor(self.seen[node]):
            return _Constant(self.seen[node])  # x.size(0), x.shape: used by a view
        if node.op == "call_module":
            module = self.modules[node.target]
            if len(node.args) != 1 or node.kwargs:
                self.fail(node, f"{type(module).__name__} called with several arguments")
            handler = next((h for t, h in _MODULES if isinstance(module, t)), None)
            if handler is None:
                self.fail(node, type(module).__name__)
            return handler(self, node, module)
        if node.op == "call_function":
            handler = _FUNCTIONS.get(node.target)
            if handler is None:
                self.fail(node, _function_name(node.target))
            return handler(self, node)
        handler = _METHODS.get(node.target)
        if handler is None:
            self.fail(node, f"Tensor.{node.target}")
        return handler(self, node)

    # ----------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, what: str, why: str = _DEFAULT_OP) -> NoReturn:
        raise ExportError(f"cannot export {self.where(node)} ({what}): {why}")

    def where(self, node: fx.Node) -> str:
        """The layer a node belongs to: its module, or the module whose forward calls it."""
        if node.op == "call_module":
            return node.target
        stack = list(node.meta.get("nn_module_stack", {}))
        return stack[-1] if stack else f"{type(self.model).__name__}.forward"

    def name(self, node: fx.Node) -> str:
        """The node's name in the file: the module, or ``<module>.<fx name>`` of a call."""
        if node.op == "call_module":
            return node.target
        stack = list(node.meta.get("nn_module_stack", {}))
        return f"{stack[-1]}.{node.name}" if stack else node.name

    def value(self, arg: Any, node: fx.Node) -> int:
        """The value id of ``arg``, an input of ``node`` that must be a tensor of the graph."""
        env = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(env, int):
            self.fail(node, f"an input of type {type(arg).__name__}", "inputs must be tensors")
        return env

    def shape(self, arg: fx.Node, node: fx.Node) -> tuple[int, int, int, int]:
        """The graph shape (N, C, H, W) of ``arg``; 2-d and 4-d tensors only."""
        shape = _graph_shape(self.seen.get(arg))
        if shape is None:
            recorded = self.seen.get(arg)
            dims = tuple(recorded.shape) if isinstance(recorded, torch.Tensor) else recorded
            self.fail(node, f"a tensor of shape {dims}", "the runtime's values are (N, C, H, W)")
        return shape

    def rank(self, arg: fx.Node) -> int:
        return self.seen[arg].dim()

    def const(self, arg: Any) -> Any:
        """``arg`` with every traced constant (a size, a number) replaced by its value."""
        if isinstance(arg, fx.Node) and isinstance(self.env.get(arg), _Constant):
            return self.env[arg].value
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.const(a) for a in arg)
        return arg

    def bind(self, node: fx.Node, params: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
        """The node's arguments by name (``params``: name and default, _REQUIRED for none),
        traced constants resolved."""
        names = [p for p, _ in params]
        out = dict(params)
        if len(node.args) > len(names):
            self.fail(node, f"{len(node.args)} positional arguments", "unexpected arguments")
        out.update(zip(names, node.args, strict=False))
        for key, arg in node.kwargs.items():
            if key not in out:
                self.fail(node, f"argument {key}", "an argument the exporter does not know")
            out[key] = arg
        if any(v is _REQUIRED for v in out.values()):
            self.fail(node, "a missing argument", "unexpected arguments")
        return {k: self.const(v) for k, v in out.items()}

    def tensor(self, name: str, array: Any) -> str:
        """Store ``array`` (fp32, or uint64 words) under a new name; returns the name."""
        unique, k = name, 1
        while unique in self.tensors:
            k += 1
            unique = f"{name}#{k}"
        array = array if isinstance(array, np.ndarray) else _numpy(array)
        self.tensors[unique] = np.ascontiguousarray(array)
        return unique

    def emit(
        self,
        op: str,
        inputs: list[int],
        name: str,
        tensors: dict[str, Any] | None = None,
        iattr: dict[str, int] | None = None,
        fattr: dict[str, float] | None = None,
    ) -> int:
        """Append one node (tensors: slot -> array, None for an absent one); its value id."""
        slots = {
            slot: self.tensor(f"{name}.{slot}", array)
            for slot, array in (tensors or {}).items()
            if array is not None
        }
        iattr = {k: int(v) for k, v in (iattr or {}).items()}
        self.nodes.append(Node(op, inputs, slots, iattr, dict(fattr or {}), name))
        return len(self.nodes)

    def concat(self, values: list[int], name: str) -> int:
        """Channel concat of any number of values (the op takes 2 to 4: chained)."""
        while len(values) > 1:
            values = [self.emit("concat", values[:4], name), *values[4:]]
        return values[0]

    def check_in_place(self, node: fx.Node, in_place: bool) -> None:
        """An in-place op changes its input for every later reader; the graph's values are
        never overwritten, so the input must have no other reader."""
        source = node.args[0] if node.args else None
        if in_place and isinstance(source, fx.Node) and len(source.users) > 1:
            self.fail(node, "an in-place op on a value read elsewhere", "make it out of place")

    def subsample_pad(
        self, x: int, name: str, stride: tuple[int, int], before: int, after: int
    ) -> int:
        """x[:, :, ::stride_h, ::stride_w] with ``before`` / ``after`` zero channels (negative:
        channels removed); no op when nothing changes."""
        if (stride, before, after) == ((1, 1), 0, 0):
            return x
        attrs = {"stride_h": stride[0], "stride_w": stride[1]}
        return self.emit(
            "subsample_pad", [x], name, iattr={**attrs, "pad_before": before, "pad_after": after}
        )

    def conv_attrs(self, node: fx.Node, layer: nn.Conv2d) -> dict[str, int]:
        """stride, integer zero padding ("same" / "valid" resolved) and dilation of a conv."""
        if layer.padding_mode != "zeros":
            self.fail(node, f"padding_mode {layer.padding_mode!r}", "the runtime pads with zeros")
        (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
        padding = layer.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            totals = (dh * (kh - 1), dw * (kw - 1))
            if totals[0] % 2 or totals[1] % 2:
                self.fail(node, "padding='same', uneven", "the runtime pads both sides equally")
            padding = (totals[0] // 2, totals[1] // 2)
        return {
            "stride_h": layer.stride[0],
            "stride_w": layer.stride[1],
            "pad_h": padding[0],
            "pad_w": padding[1],
            "dil_h": dh,
            "dil_w": dw,
        }

    def layer_input(self, node: fx.Node, layer: nn.Module) -> int:
        """The input value of a conv (a 4-d tensor) or linear (a 2-d one)."""
        rank = 4 if isinstance(layer, nn.Conv2d) else 2
        if self.rank(node.args[0]) != rank:
            self.fail(
                node,
                f"{type(layer).__name__} on a {self.rank(node.args[0])}-d tensor",
                f"the exporter takes {rank}-d inputs for it",
            )
        return self.value(node.args[0], node)

    def float_layer(
        self, node: fx.Node, layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> int:
        """conv2d / linear with float ``weight`` and ``bias``."""
        x = self.layer_input(node, layer)
        tensors = {"weight": weight, "bias": bias}
        if isinstance(layer, nn.Conv2d):
            attrs = {**self.conv_attrs(node, layer), "groups": layer.groups}
            return self.emit("conv2d", [x], node.target, tensors, attrs)
        return self.emit("linear", [x], node.target, tensors)

    def foldable_batchnorm(self, node: fx.Node, channels: int) -> fx.Node | None:
        """The BatchNorm call that is the only reader of ``node`` and reads nothing else."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        bn = self.modules.get(user.target) if user.op == "call_module" else None
        if (
            isinstance(bn, BATCHNORMS)
            and user.args == (node,)
            and not user.kwargs
            and bn.running_mean is not None
            and bn.num_features == channels
        ):
            return user
        return None

    def pool(
        self,
        node: fx.Node,
        op: str,
        kernel: Any,
        stride: Any,
        padding: Any,
        ceil_mode: bool,
        count_include_pad: bool = True,
    ) -> int:
        x = self.value(node.args[0], node)
        self.shape(node.args[0], node)
        kh, kw = _pair(kernel)
        sh, sw = (kh, kw) if stride is None or stride == [] or stride == () else _pair(stride)
        ph, pw = _pair(padding)
        attrs = {"kh": kh, "kw": kw, "stride_h": sh, "stride_w": sw, "pad_h": ph, "pad_w": pw}
        attrs["ceil_mode"] = bool(ceil_mode)
        if op == "avgpool2d":
            attrs["count_include_pad"] = bool(count_include_pad)
        return self.emit(op, [x], self.name(node), iattr=attrs)

    def adaptive_avgpool(self, node: fx.Node, output_size: Any) -> int:
        x = self.value(node.args[0], node)
        shape = self.shape(node.args[0], node)
        size = output_size if isinstance(output_size, (list, tuple)) else (output_size,) * 2
        size = tuple(s if s is not None else shape[2 + i] for i, s in enumerate(size))
        if size == shape[2:]:
            return x
        if size != (1, 1):
            self.fail(node, f"adaptive average pool to {size}", "the runtime pools to 1x1 only")
        return self.emit("global_avgpool", [x], self.name(node))

    def interleave(self, values: list[int], node: fx.Node) -> int:
        """Channel interleave of ``values`` (ChannelShuffle.cat): concat + channel_shuffle."""
        x = self.concat(values, self.name(node))
        groups = {"groups": len(values)}
        return self.emit("channel_shuffle", [x], self.name(node), iattr=groups)

    def flatten(self, node: fx.Node, source: fx.Node, start: int, end: int) -> int:
        stacked = self.env.get(source)
        if isinstance(stacked, _Stacked):
            if (start, end) != (1, 2):
                self.fail(node, f"flatten({start}, {end}) of a stack", "see ChannelShuffle.cat")
            return self.interleave(stacked.values, node)
        x = self.value(source, node)
        rank = self.rank(source)
        start, end = start % rank, end % rank
        if start == end:
            return x
        if (start, end) != (1, rank - 1):
            self.fail(node, f"flatten({start}, {end})", "the runtime flattens all but dim 0")
        if self.shape(source, node)[2:] == (1, 1):
            return x
        return self.emit("flatten", [x], self.name(node))

    def elementwise(self, node: fx.Node, op: str, a: Any, b: Any) -> int:
        """add / mul of two values (mul: the second may be (N, C, 1, 1)), or of a value and a
        number or a per-channel constant (an affine node)."""
        is_value = [isinstance(v, fx.Node) and isinstance(self.env.get(v), int) for v in (a, b)]
        if not any(is_value):
            self.fail(node, f"{op} of two constants", "nothing of the network's input")
        if not all(is_value):
            full, other = (a, b) if is_value[0] else (b, a)
            shape = self.shape(full, node)
            vector = self.per_channel(node, self.const(other), self.rank(full), shape[1])
            slot = "bias" if op == "add" else "scale"
            inputs, tensors = [self.value(full, node)], {slot: vector}
            op = "affine"
        else:
            sa, sb = self.shape(a, node), self.shape(b, node)
            if op == "mul" and sa == (*sb[:2], 1, 1) and sa != sb:
                a, b, sa, sb = b, a, sb, sa
            if sb not in (sa, (*sa[:2], 1, 1) if op == "mul" else sa):
                self.fail(
                    node,
                    f"{op} of shapes {sa} and {sb}",
                    "the runtime adds values of one shape and multiplies by (N, C, 1, 1) ones",
                )
            full, shape = a, sa
            inputs, tensors = [self.value(a, node), self.value(b, node)], {}
        if self.shape(node, node) != shape or self.rank(node) != self.rank(full):
            result = tuple(self.seen[node].shape)
            self.fail(node, f"{op} broadcasting to {result}", "the runtime does not broadcast so")
        return self.emit(op, inputs, self.name(node), tensors)

    def per_channel(self, node: fx.Node, other: Any, rank: int, channels: int) -> np.ndarray:
        """A number, or a constant tensor that broadcasts per channel over a ``rank``-d value
        ((C, 1, 1) or (1, C, 1, 1) for 4-d, (C,) or (1, C) for 2-d), as a vector."""
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return np.full(channels, other, dtype=np.float32)
        if isinstance(other, torch.Tensor):
            ones = (1,) * (rank - 2)
            if other.numel() == 1:
                return np.full(channels, float(other), dtype=np.float32)
            if tuple(other.shape) in ((channels, *ones), (1, channels, *ones)):
                return _numpy(other.reshape(channels))
        self.fail(node, f"an operand {type(other).__name__}", "operands are numbers or per-channel")


def _attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


# --------------------------------------------------------------------------- module handlers
# Each returns what the module call is in the graph (see _GraphBuilder).


def _binary_layer(b: _GraphBuilder, node: fx.Node, layer: BinaryLayer) -> int:
    """1w1a: bconv2d (weight scale, alpha, bias and a BatchNorm read only by it folded);
    1w32a: conv2d / linear with the float weights the layer multiplies by."""
    kind = f"{type(layer).__name__} {layer.bits}"
    if layer.weight_spec is None:
        b.fail(node, kind, "the runtime binarizes inputs only in bconv2d, of binary weights")
    if layer.act_spec is None:
        b.float_binary.append(node.target)
        return b.float_layer(node, layer, *layer.scaled_weight_and_bias())
    groups = getattr(layer, "groups", 1)
    if groups != 1:
        b.fail(node, f"{kind}, groups {groups}", "bconv2d runs groups 1 only")
    negative, scale = weight_signs_and_scale(node.target, layer)
    bn_node = b.foldable_batchnorm(node, layer.weight.shape[0])
    out_scale, out_bias = fold(layer, scale, b.modules[bn_node.target] if bn_node else None)
    x = b.layer_input(node, layer)
    if isinstance(layer, BinaryConv2d):
        attrs = b.conv_attrs(node, layer)
    else:
        attrs = {"stride_h": 1, "stride_w": 1, "dil_h": 1, "dil_w": 1}
    tensors = {
        "weight_bits": pack_weight(negative).numpy().view(np.uint64),
        "out_scale": out_scale,
        "out_bias": out_bias,
        "act_bias": getattr(layer, "act_bias", None),
    }
    value = b.emit("bconv2d", [x], node.target, tensors, attrs)
    b.packed.append(node.target)
    if bn_node is not None:
        b.folded[bn_node] = value
        b.bn_folded.append(bn_node.target)
    return value


def _float_layer(b: _GraphBuilder, node: fx.Node, layer: nn.Conv2d | nn.Linear) -> int:
    return b.float_layer(node, layer, layer.weight, layer.bias)


def _batchnorm(b: _GraphBuilder, node: fx.Node, bn: nn.Module) -> int:
    """Folded into the bconv2d before it, or an affine node."""
    if node in b.folded:
        return b.folded[node]
    if bn.running_mean is None:
        b.fail(node, "BatchNorm without running statistics", "use track_running_stats=True")
    x = b.value(node.args[0], node)
    b.shape(node.args[0], node)
    scale, shift = batchnorm_affine(bn)
    return b.emit("affine", [x], node.target, {"scale": scale, "bias": shift})


def _unary(op: str) -> Callable[[_GraphBuilder, fx.Node, nn.Module], int]:
    def handler(b: _GraphBuilder, node: fx.Node, module: nn.Module) -> int:
        b.check_in_place(node, getattr(module, "inplace", False))
        return b.emit(op, [b.value(node.args[0], node)], node.target)

    return handler


def _hardtanh(b: _GraphBuilder, node: fx.Node, m: nn.Hardtanh) -> int:
    b.check_in_place(node, m.inplace)
    bounds = {"min_val": m.min_val, "max_val": m.max_val}
    return b.emit("hardtanh", [b.value(node.args[0], node)], node.target, fattr=bounds)


def _prelu(b: _GraphBuilder, node: fx.Node, m: nn.PReLU | nn.LeakyReLU) -> int:
    b.check_in_place(node, getattr(m, "inplace", False))
    slope = m.weight if isinstance(m, nn.PReLU) else [m.negative_slope]
    return b.emit("prelu", [b.value(node.args[0], node)], node.target, {"slope": slope})


def _rprelu(b: _GraphBuilder, node: fx.Node, m: RPReLU) -> int:
    """affine (bias) -> prelu -> affine (bias)."""
    t = node.target
    x = b.value(node.args[0], node)
    x = b.emit("affine", [x], f"{t}.shift_in", {"bias": m.shift_in.bias.reshape(-1)})
    x = b.emit("prelu", [x], f"{t}.prelu", {"slope": m.prelu.weight})
    return b.emit("affine", [x], f"{t}.shift_out", {"bias": m.shift_out.bias.reshape(-1)})


def _learnable_bias(b: _GraphBuilder, node: fx.Node, m: LearnableBias) -> int:
    bias = {"bias": m.bias.reshape(-1)}
    return b.emit("affine", [b.value(node.args[0], node)], node.target, bias)


def _channel_shuffle(b: _GraphBuilder, node: fx.Node, m: ChannelShuffle) -> int:
    x = b.value(node.args[0], node)
    return b.emit("channel_shuffle", [x], node.target, iattr={"groups": m.groups})


def _channel_pad_shortcut(b: _GraphBuilder, node: fx.Node, m: ChannelPadShortcut) -> int:
    """avgpool mode: avgpool2d (2x2/2) + subsample_pad (stride 1); subsample mode:
    subsample_pad (stride 2)."""
    x, stride = b.value(node.args[0], node), (2, 2)
    if m.mode == "avgpool":
        attrs = {"kh": 2, "kw": 2, "stride_h": 2, "stride_w": 2, "pad_h": 0, "pad_w": 0}
        attrs |= {"ceil_mode": 0, "count_include_pad": 1}
        x, stride = b.emit("avgpool2d", [x], f"{node.target}.pool", iattr=attrs), (1, 1)
    return b.subsample_pad(x, node.target, stride, *m.pad)


def _learned_rescale(b: _GraphBuilder, node: fx.Node, m: LearnedRescale) -> int:
    scale = m.scale_h * m.scale_w * m.scale_c  # as the module multiplies, (1, C, H, W)
    return b.emit("rescale_hw", [b.value(node.args[0], node)], node.target, {"scale": scale})


def _channel_gate(b: _GraphBuilder, node: fx.Node, m: ChannelGate) -> int:
    """global_avgpool -> linear -> relu -> linear -> sigmoid: (N, C_out, 1, 1)."""
    t = node.target
    x = b.emit("global_avgpool", [b.value(node.args[0], node)], f"{t}.pool")
    x = b.emit("linear", [x], f"{t}.reduce", {"weight": m.reduce.weight, "bias": m.reduce.bias})
    x = b.emit("relu", [x], f"{t}.relu")
    x = b.emit("linear", [x], f"{t}.expand", {"weight": m.expand.weight, "bias": m.expand.bias})
    return b.emit("sigmoid", [x], f"{t}.sigmoid")


def _maxpool(b: _GraphBuilder, node: fx.Node, m: nn.MaxPool2d) -> int:
    if _pair(m.dilation) != (1, 1) or m.return_indices:
        b.fail(node, "MaxPool2d with dilation or indices", "the runtime pools plainly")
    return b.pool(node, "maxpool2d", m.kernel_size, m.stride, m.padding, m.ceil_mode)


def _avgpool(b: _GraphBuilder, node: fx.Node, m: nn.AvgPool2d) -> int:
    if m.divisor_override is not None:
        b.fail(node, "AvgPool2d with divisor_override", "the runtime divides by the window")
    return b.pool(
        node, "avgpool2d", m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad
    )


def _adaptive_avgpool(b: _GraphBuilder, node: fx.Node, m: nn.AdaptiveAvgPool2d) -> int:
    return b.adaptive_avgpool(node, m.output_size)


def _flatten_module(b: _GraphBuilder, node: fx.Node, m: nn.Flatten) -> int:
    return b.flatten(node, node.args[0], m.start_dim, m.end_dim)


def _identity(b: _GraphBuilder, node: fx.Node, m: nn.Module) -> int:
    return b.value(node.args[0], node)


# first match wins: the binary layers before nn.Conv2d / nn.Linear, which they subclass
_MODULES: list[tuple[type | tuple[type, ...], Callable[..., _Env]]] = [
    (BinaryLayer, _binary_layer),
    ((nn.Conv2d, nn.Linear), _float_layer),
    (BATCHNORMS, _batchnorm),
    (nn.ReLU, _unary("relu")),
    (nn.Sigmoid, _unary("sigmoid")),
    (LeakyClip, _unary("leaky_clip")),
    (nn.Hardtanh, _hardtanh),  # and nn.ReLU6, a Hardtanh(0, 6)
    ((nn.PReLU, nn.LeakyReLU), _prelu),
    (RPReLU, _rprelu),
    (LearnableBias, _learnable_bias),
    (ChannelShuffle, _channel_shuffle),
    (ChannelPadShortcut, _channel_pad_shortcut),
    (LearnedRescale, _learned_rescale),
    (ChannelGate, _channel_gate),
    (nn.MaxPool2d, _maxpool),
    (nn.AvgPool2d, _avgpool),
    (nn.AdaptiveAvgPool2d, _adaptive_avgpool),
    (nn.Flatten, _flatten_module),
    ((nn.Identity, nn.Dropout, nn.Dropout2d), _identity),  # eval mode: identities
]


# --------------------------------------------------------------------------- function handlers

_INPUT = (("input", _REQUIRED),)


def _function_unary(op: str, *params: tuple[str, Any]) -> Callable[[_GraphBuilder, fx.Node], int]:
    def handler(b: _GraphBuilder, node: fx.Node) -> int:
        args = b.bind(node, (*_INPUT, *params))
        b.check_in_place(node, args.get("inplace", False))
        fattr = {k: args[k] for k in ("min_val", "max_val") if k in args}
        return b.emit(op, [b.value(args["input"], node)], b.name(node), fattr=fattr)

    return handler


def _f_leaky_relu(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("negative_slope", 0.01), ("inplace", False)))
    b.check_in_place(node, args["inplace"])
    slope = {"slope": [args["negative_slope"]]}
    return b.emit("prelu", [b.value(args["input"], node)], b.name(node), slope)


def _f_avg_pool2d(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(
        node,
        (
            *_INPUT,
            ("kernel_size", _REQUIRED),
            ("stride", None),
            ("padding", 0),
            ("ceil_mode", False),
            ("count_include_pad", True),
            ("divisor_override", None),
        ),
    )
    if args["divisor_override"] is not None:
        b.fail(node, "F.avg_pool2d with divisor_override", "the runtime divides by the window")
    return b.pool(
        node,
        "avgpool2d",
        args["kernel_size"],
        args["stride"],
        args["padding"],
        args["ceil_mode"],
        args["count_include_pad"],
    )


def _f_max_pool2d(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(
        node,
        (
            *_INPUT,
            ("kernel_size", _REQUIRED),
            ("stride", None),
            ("padding", 0),
            ("dilation", 1),
            ("ceil_mode", False),
            ("return_indices", False),
        ),
    )
    if _pair(args["dilation"]) != (1, 1) or args["return_indices"]:
        b.fail(node, "F.max_pool2d with dilation or indices", "the runtime pools plainly")
    kernel, stride, padding = args["kernel_size"], args["stride"], args["padding"]
    return b.pool(node, "maxpool2d", kernel, stride, padding, args["ceil_mode"])


def _f_adaptive_avg_pool2d(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("output_size", _REQUIRED)))
    return b.adaptive_avgpool(node, args["output_size"])


def _f_flatten(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("start_dim", 0), ("end_dim", -1)))
    return b.flatten(node, args["input"], args["start_dim"], args["end_dim"])


def _f_add(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("other", _REQUIRED), ("alpha", 1)))
    if args["alpha"] != 1:
        b.fail(node, f"torch.add with alpha={args['alpha']}", "the runtime adds plainly")
    return b.elementwise(node, "add", args["input"], args["other"])


def _f_mul(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("other", _REQUIRED)))
    return b.elementwise(node, "mul", args["input"], args["other"])


def _operator(op: str) -> Callable[[_GraphBuilder, fx.Node], int]:
    def handler(b: _GraphBuilder, node: fx.Node) -> int:
        return b.elementwise(node, op, b.const(node.args[0]), b.const(node.args[1]))

    return handler


def _f_cat(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (("tensors", _REQUIRED), ("dim", 0)))
    parts = list(args["tensors"])
    rank = b.rank(parts[0])
    if args["dim"] % rank != 1:
        b.fail(node, f"torch.cat along dim {args['dim']}", "the runtime concatenates channels")
    for part in parts:
        b.shape(part, node)
    return b.concat([b.value(p, node) for p in parts], b.name(node))


def _f_interleave(b: _GraphBuilder, node: fx.Node) -> int:
    """onebit.nn.layers.interleave_channels (ChannelShuffle.cat): concat + channel_shuffle."""
    parts = list(b.bind(node, (("tensors", _REQUIRED),))["tensors"])
    for part in parts:
        b.shape(part, node)
    return b.interleave([b.value(p, node) for p in parts], node)


def _f_stack(b: _GraphBuilder, node: fx.Node) -> _Stacked:
    """torch.stack(tensors, dim=2) read only by flatten(1, 2): ChannelShuffle.cat."""
    args = b.bind(node, (("tensors", _REQUIRED), ("dim", 0)))
    parts = list(args["tensors"])
    rank = b.rank(parts[0]) + 1
    readers_flatten = all(
        u.target in ("flatten", torch.flatten) and u.args[1:] == (1, 2) for u in node.users
    )
    if args["dim"] % rank != 2 or not readers_flatten:
        b.fail(node, "torch.stack", "the runtime stacks only as ChannelShuffle.cat does")
    for part in parts:
        b.shape(part, node)
    return _Stacked([b.value(p, node) for p in parts])


def _split(
    b: _GraphBuilder, node: fx.Node, source: Any, sizes: Any, dim: int, chunks: bool
) -> _Pieces:
    """torch.split (sizes: a piece size or the sizes) / torch.chunk (sizes: the count)."""
    x = b.value(source, node)
    shape = b.shape(source, node)
    if dim % b.rank(source) != 1:
        b.fail(node, f"a split along dim {dim}", "the runtime splits channels only")
    channels = shape[1]
    if chunks:
        sizes = -(-channels // sizes)
    if isinstance(sizes, int):
        sizes = [sizes] * (channels // sizes) + ([channels % sizes] if channels % sizes else [])
    bounds = np.cumsum([0, *sizes]).tolist()
    return _Pieces(x, channels, list(itertools.pairwise(bounds)))


def _f_split(b: _GraphBuilder, node: fx.Node) -> _Pieces:
    args = b.bind(node, (("tensor", _REQUIRED), ("split_size_or_sections", _REQUIRED), ("dim", 0)))
    return _split(b, node, args["tensor"], args["split_size_or_sections"], args["dim"], False)


def _f_chunk(b: _GraphBuilder, node: fx.Node) -> _Pieces:
    args = b.bind(node, (*_INPUT, ("chunks", _REQUIRED), ("dim", 0)))
    return _split(b, node, args["input"], args["chunks"], args["dim"], True)


def _getitem(b: _GraphBuilder, node: fx.Node) -> int:
    """A piece of a split, or x[:, a:b, ::s, ::s] (one subsample_pad), or an indexing that
    keeps the graph value (x[:, :, None, None] of an (N, C) tensor)."""
    source, index = node.args[0], b.const(node.args[1])
    pieces = b.env.get(source)
    if isinstance(pieces, _Pieces):
        start, stop = pieces.ranges[index]
        before, after = -start, stop - pieces.channels
        return b.subsample_pad(pieces.value, b.name(node), (1, 1), before, after)
    x = b.value(source, node)
    shape = b.shape(source, node)
    index = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if _graph_shape(b.seen[node]) == shape and all(i in (None, full, Ellipsis) for i in index):
        return x
    rank = b.rank(source)
    slices = (*index, *[full] * (rank - len(index)))
    spatial_ok = all(
        isinstance(s, slice) and s.start in (None, 0) and s.stop is None for s in slices[2:]
    )
    if not (
        len(slices) == rank
        and all(isinstance(s, slice) for s in slices)
        and slices[0] == full
        and slices[1].step in (None, 1)
        and spatial_ok
    ):
        b.fail(node, f"indexing {index}", "the runtime slices channels and subsamples H, W only")
    start, stop, _ = slices[1].indices(shape[1])
    stride = tuple(s.step or 1 for s in slices[2:]) or (1, 1)
    return b.subsample_pad(x, b.name(node), stride, -start, stop - shape[1])


def _f_pad(b: _GraphBuilder, node: fx.Node) -> int:
    """Zero channels before / after (negative: removed): subsample_pad with stride 1."""
    args = b.bind(node, (*_INPUT, ("pad", _REQUIRED), ("mode", "constant"), ("value", None)))
    x = b.value(args["input"], node)
    pad, rank = list(args["pad"]), b.rank(args["input"])
    channel_pad = (rank == 4 and len(pad) == 6 and not any(pad[:4])) or (
        rank == 2 and len(pad) == 2
    )
    if args["mode"] != "constant" or args["value"] not in (None, 0) or not channel_pad:
        b.fail(node, f"F.pad {pad}", "the runtime pads channels with zeros only")
    return b.subsample_pad(x, b.name(node), (1, 1), pad[-2], pad[-1])


def _f_dropout(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (*_INPUT, ("p", 0.5), ("training", True), ("inplace", False)))
    if args["training"]:
        b.fail(node, "F.dropout(training=True)", "pass training=self.training")
    return b.value(args["input"], node)


def _f_identity(b: _GraphBuilder, node: fx.Node) -> int:
    return b.value(node.args[0], node)


_FUNCTIONS: dict[Any, Callable[[_GraphBuilder, fx.Node], _Env]] = {
    operator.add: _operator("add"),
    operator.iadd: _operator("add"),
    operator.mul: _operator("mul"),
    operator.imul: _operator("mul"),
    torch.add: _f_add,
    torch.mul: _f_mul,
    torch.cat: _f_cat,
    torch.stack: _f_stack,
    interleave_channels: _f_interleave,
    torch.flatten: _f_flatten,
    torch.split: _f_split,
    torch.chunk: _f_chunk,
    operator.getitem: _getitem,
    F.relu: _function_unary("relu", ("inplace", False)),
    torch.relu: _function_unary("relu"),
    torch.sigmoid: _function_unary("sigmoid"),
    F.hardtanh: _function_unary(
        "hardtanh", ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)
    ),
    F.leaky_relu: _f_leaky_relu,
    F.avg_pool2d: _f_avg_pool2d,
    F.max_pool2d: _f_max_pool2d,
    F.adaptive_avg_pool2d: _f_adaptive_avg_pool2d,
    F.pad: _f_pad,
    F.dropout: _f_dropout,
    grad_like_input: _f_identity,
}


# --------------------------------------------------------------------------- method handlers


def _method_unary(op: str, in_place: bool = False) -> Callable[[_GraphBuilder, fx.Node], int]:
    def handler(b: _GraphBuilder, node: fx.Node) -> int:
        b.check_in_place(node, in_place)
        return b.emit(op, [b.value(node.args[0], node)], b.name(node))

    return handler


def _method_elementwise(op: str, in_place: bool = False) -> Callable[[_GraphBuilder, fx.Node], int]:
    def handler(b: _GraphBuilder, node: fx.Node) -> int:
        b.check_in_place(node, in_place)
        args = b.bind(node, (("self", _REQUIRED), ("other", _REQUIRED), ("alpha", 1)))
        if args["alpha"] != 1:
            b.fail(node, f"Tensor.{node.target} with alpha", "the runtime adds plainly")
        return b.elementwise(node, op, args["self"], args["other"])

    return handler


def _m_flatten(b: _GraphBuilder, node: fx.Node) -> int:
    args = b.bind(node, (("self", _REQUIRED), ("start_dim", 0), ("end_dim", -1)))
    return b.flatten(node, args["self"], args["start_dim"], args["end_dim"])


def _m_view(b: _GraphBuilder, node: fx.Node) -> int:
    """view / reshape that keeps the graph value, or flattens (N, C, H, W) to (N, CHW)."""
    source = node.args[0]
    x, before = b.value(source, node), b.shape(source, node)
    after = tuple(b.seen[node].shape)
    if _graph_shape(b.seen[node]) == before:
        return x
    if b.rank(source) == 4 and after == (before[0], before[1] * before[2] * before[3]):
        return b.flatten(node, source, 1, -1)
    b.fail(node, f"Tensor.{node.target} to {after}", "the runtime reshapes only as a flatten")


def _m_split(b: _GraphBuilder, node: fx.Node) -> _Pieces:
    args = b.bind(node, (("self", _REQUIRED), ("split_size", _REQUIRED), ("dim", 0)))
    return _split(b, node, args["self"], args["split_size"], args["dim"], False)


def _m_chunk(b: _GraphBuilder, node: fx.Node) -> _Pieces:
    args = b.bind(node, (("self", _REQUIRED), ("chunks", _REQUIRED), ("dim", 0)))
    return _split(b, node, args["self"], args["chunks"], args["dim"], True)


def _m_repeat(b: _GraphBuilder, node: fx.Node) -> int:
    """x.repeat(1, r, 1, 1): r copies along the channels (a concat)."""
    source, sizes = node.args[0], b.const(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = tuple(sizes[0])
    x = b.value(source, node)
    rank = b.rank(source)
    if len(sizes) != rank or any(s != 1 for i, s in enumerate(sizes) if i != 1):
        b.fail(node, f"Tensor.repeat{tuple(sizes)}", "the runtime repeats channels only")
    return b.concat([x] * sizes[1], b.name(node))


_METHODS: dict[str, Callable[[_GraphBuilder, fx.Node], _Env]] = {
    "add": _method_elementwise("add"),
    "add_": _method_elementwise("add", in_place=True),
    "mul": _method_elementwise("mul"),
    "mul_": _method_elementwise("mul", in_place=True),
    "relu": _method_unary("relu"),
    "relu_": _method_unary("relu", in_place=True),
    "sigmoid": _method_unary("sigmoid"),
    "flatten": _m_flatten,
    "view": _m_view,
    "reshape": _m_view,
    "split": _m_split,
    "chunk": _m_chunk,
    "repeat": _m_repeat,
    "contiguous": _f_identity,
    "clone": _f_identity,
    "detach": _f_identity,
}


# --------------------------------------------------------------------------- export

FORMAT = "onebit-graph"


def _build_graph(model: nn.Module, spec: InputSpec) -> tuple[_GraphBuilder, int]:
    """Trace ``model`` (eval mode), run it once on a random batch of the spec's shape to learn
    every value's shape, and convert it; (builder, number of classes)."""
    name = type(model).__name__
    try:
        graph = trace_graph(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable user code
        detail = (str(err).splitlines() or [""])[0][:120]
        raise ExportError(
            f"cannot export {name}: torch.fx cannot trace its forward ({type(err).__name__}: "
            f"{detail}); the graph file needs a forward without data-dependent control flow"
        ) from None
    recorder = _Recorder(fx.GraphModule(model, graph))
    param = next(model.parameters(), None)
    x = torch.randn(
        2, spec.channels, spec.size, spec.size, generator=torch.Generator().manual_seed(0)
    )
    if param is not None:
        x = x.to(param.device, param.dtype)
    try:
        recorder.run(x)
    except (RuntimeError, ValueError, TypeError) as err:
        if isinstance(err, OneBitError):
            raise
        detail = (str(err).splitlines() or [""])[0][:160]
        raise ExportError(
            f"cannot export {name}: it does not run on {spec.describe()} ({detail}); pass the "
            "input_spec it was trained on"
        ) from None
    builder = _GraphBuilder(model, graph, recorder.seen)
    return builder, builder.build()


def _input_spec(model: nn.Module, given: InputSpec | None) -> InputSpec:
    spec = given or default_spec(model)
    if spec is None:
        raise ExportError(
            f"cannot export {type(model).__name__} without an input spec: pass "
            "input_spec=onebit.data.InputSpec(channels=..., size=..., mean=..., std=...)"
        )
    if spec.channels > 4:
        raise ExportError(
            f"input spec of {spec.channels} channels: the graph file stores the normalisation "
            "of at most 4"
        )
    # what load will check, now: no file that its own loader refuses
    as_stored = json.loads(json.dumps(spec.to_json()))
    InputSpec.from_json(as_stored, "export", what="input_spec")
    return spec


@torch.no_grad()
def export_graph(
    model: nn.Module,
    path: str | Path,
    input_spec: InputSpec | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (evaluated in eval mode) as a graph file (:mod:`onebit.deploy.graph`).

    ``input_spec``: the input the model takes (default: its registry entry's); its channels
    and size fix the graph's input. ``meta``: more entries for the file's meta JSON (e.g.
    ``accuracy``). Returns the meta as stored (read back from the file): format, model
    (name and options), input spec, class names, the binary layers run as ``bconv2d``
    (``packed``) and as float convs (``float_binary``), the BatchNorms ``folded``, and the
    node and tensor names. An op the runtime does not run is an ExportError naming it and its
    layer.
    """
    check_export_target(path)
    was_training = model.training
    model.eval()
    try:
        check_binarizers(model)
        spec = _input_spec(model, input_spec)
        builder, num_classes = _build_graph(model, spec)
        stored = {
            "format": FORMAT,
            "version": VERSION,
            "model": model_spec(model),
            "input": spec.to_json(),
            "class_names": list(spec.class_names) if spec.class_names else None,
            "packed": builder.packed,
            "float_binary": builder.float_binary,
            "folded": builder.bn_folded,
            **(meta or {}),
        }
    finally:
        model.train(was_training)
    raw = spec.raw_size or 0
    record = InputRecord(
        spec.channels,
        spec.size,
        spec.size,
        num_classes,
        spec.transform,
        raw,
        raw,
        spec.mean,
        spec.std,
    )
    write_graph(path, builder.nodes, builder.tensors, record, stored)
    return read_graph(Path(path).read_bytes(), str(path))[3]


def export(
    model: nn.Module,
    path: str | Path,
    *,
    fp16: bool = False,
    input_spec: InputSpec | None = None,
    accuracy: dict[str, float] | None = None,
    imports: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (evaluated in eval mode) to ``path`` as a ``.onebit`` graph file
    (:func:`export_graph`); returns the file's meta.

    ``input_spec``: the input the model was trained on (default: its registry entry's, see
    :func:`onebit.models.default_input_spec`), stored so that the deployed model can
    ``predict`` raw images. ``accuracy``: the trained model's test figures (``val_top1``,
    ...), stored for ``onebit eval`` to compare with. ``imports``: the modules a config
    imports; a graph file runs without Python, so loading it imports nothing and they are
    not stored. ``fp16=True`` is refused: the graph file stores full-precision tensors as
    fp32.
    """
    if fp16:
        raise ExportError(
            "fp16 export (--fp16): the graph file (format 2) stores full-precision tensors as "
            "fp32 only; export without it"
        )
    del imports  # nothing to import at load: the file holds the whole network
    extra = {"accuracy": {k: float(v) for k, v in accuracy.items()}} if accuracy else {}
    return export_graph(model, path, input_spec, extra)
