"""A reference interpreter of graph files (format 2) in PyTorch, one plain torch op per node.

It defines what the C runtime must compute (see :mod:`onebit.deploy.graph` for the ops) and
checks the exporter: ``GraphReference.from_file(path)(x)`` equals the exported model's eval
output. Not a deployment engine: it unpacks every binary weight to floats.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from onebit.deploy.graph import InputRecord, Node, read_graph
from onebit.deploy.packing import unpack_weight

Tensors = dict[str, torch.Tensor]


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _conv2d(node: Node, x: torch.Tensor, t: Tensors) -> torch.Tensor:
    a = node.iattr
    bias = t.get(node.tensors.get("bias", ""))
    return F.conv2d(
        x,
        t[node.tensors["weight"]],
        bias,
        (a["stride_h"], a["stride_w"]),
        (a["pad_h"], a["pad_w"]),
        (a["dil_h"], a["dil_w"]),
        a["groups"],
    )


def _bconv2d(node: Node, x: torch.Tensor, t: Tensors) -> torch.Tensor:
    """sign(x + act_bias) (sign(0) = +1) convolved with the unpacked +-1 weights, zero
    padding; the integer dot product times out_scale plus out_bias."""
    a = node.iattr
    act_bias = t.get(node.tensors.get("act_bias", ""))
    if act_bias is not None:
        x = x + _channel(act_bias)
    signs = torch.where(x >= 0, 1.0, -1.0)
    words = t[node.tensors["weight_bits"]]
    weight = 1.0 - 2.0 * unpack_weight(words, x.shape[1]).float()
    stride, padding = (a["stride_h"], a["stride_w"]), (a["pad_h"], a["pad_w"])
    dot = F.conv2d(signs, weight, None, stride, padding, (a["dil_h"], a["dil_w"]))
    return dot * _channel(t[node.tensors["out_scale"]]) + _channel(t[node.tensors["out_bias"]])


def _linear(node: Node, x: torch.Tensor, t: Tensors) -> torch.Tensor:
    bias = t.get(node.tensors.get("bias", ""))
    return F.linear(x.flatten(1), t[node.tensors["weight"]], bias)[:, :, None, None]


def _affine(node: Node, x: torch.Tensor, t: Tensors) -> torch.Tensor:
    if "scale" in node.tensors:
        x = x * _channel(t[node.tensors["scale"]])
    if "bias" in node.tensors:
        x = x + _channel(t[node.tensors["bias"]])
    return x


def _pool(node: Node, x: torch.Tensor, t: Tensors) -> torch.Tensor:
    a = node.iattr
    kernel, stride = (a["kh"], a["kw"]), (a["stride_h"], a["stride_w"])
    padding, ceil = (a["pad_h"], a["pad_w"]), bool(a["ceil_mode"])
    if node.op == "maxpool2d":
        return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil)
    return F.avg_pool2d(x, kernel, stride, padding, ceil, bool(a["count_include_pad"]))


def _leaky_clip(x: torch.Tensor) -> torch.Tensor:
    clipped = x.clamp(-1.0, 1.0)
    return clipped + 0.1 * (x - clipped)


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _subsample_pad(node: Node, x: torch.Tensor) -> torch.Tensor:
    a = node.iattr
    x = x[:, :, :: a["stride_h"], :: a["stride_w"]]
    return F.pad(x, (0, 0, 0, 0, a["pad_before"], a["pad_after"]))


# op -> f(node, input values, tensors)
OPS: dict[str, Callable[[Node, list[torch.Tensor], Tensors], torch.Tensor]] = {
    "conv2d": lambda n, v, t: _conv2d(n, v[0], t),
    "bconv2d": lambda n, v, t: _bconv2d(n, v[0], t),
    "linear": lambda n, v, t: _linear(n, v[0], t),
    "affine": lambda n, v, t: _affine(n, v[0], t),
    "add": lambda n, v, t: v[0] + v[1],
    "mul": lambda n, v, t: v[0] * v[1],
    "relu": lambda n, v, t: F.relu(v[0]),
    "sigmoid": lambda n, v, t: torch.sigmoid(v[0]),
    "hardtanh": lambda n, v, t: F.hardtanh(v[0], n.fattr["min_val"], n.fattr["max_val"]),
    "prelu": lambda n, v, t: F.prelu(v[0], t[n.tensors["slope"]]),
    "leaky_clip": lambda n, v, t: _leaky_clip(v[0]),
    "maxpool2d": lambda n, v, t: _pool(n, v[0], t),
    "avgpool2d": lambda n, v, t: _pool(n, v[0], t),
    "global_avgpool": lambda n, v, t: F.adaptive_avg_pool2d(v[0], 1),
    "flatten": lambda n, v, t: v[0].flatten(1)[:, :, None, None],
    "concat": lambda n, v, t: torch.cat(v, dim=1),
    "channel_shuffle": lambda n, v, t: _channel_shuffle(v[0], n.iattr["groups"]),
    "subsample_pad": lambda n, v, t: _subsample_pad(n, v[0]),
    "rescale_hw": lambda n, v, t: v[0] * t[n.tensors["scale"]],
}


def _torch_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint64:  # packed words: the same 64 bits as packing.py's int64
        array = array.view(np.int64)
    return torch.from_numpy(array.copy())


class GraphReference:
    """A graph file run node by node in PyTorch: ``ref(x)`` takes (N, C, H, W) float32 and
    returns the logits (N, num_classes)."""

    def __init__(
        self, nodes: list[Node], tensors: dict[str, np.ndarray], input_record: InputRecord
    ):
        self.nodes = nodes
        self.tensors = {name: _torch_tensor(a) for name, a in tensors.items()}
        self.input_record = input_record

    @classmethod
    def from_file(cls, path: str | Path) -> GraphReference:
        nodes, tensors, record, _ = read_graph(Path(path).read_bytes(), str(path))
        return cls(nodes, tensors, record)

    @torch.no_grad()
    def values(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every value of the graph: the input, then each node's output."""
        values = [x.float()]
        for node in self.nodes:
            inputs = [values[i] for i in node.inputs]
            values.append(OPS[node.op](node, inputs, self.tensors))
        return values

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[-1].flatten(1)
