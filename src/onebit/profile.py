"""Measure a model: per-layer shapes, operation counts (``count_ops``), parameters and
deployed memory (``summary``).

OPs convention (Bi-Real Net, Liu et al. 2018; ReActNet, Liu et al. 2020, comparison tables):
BOPs = multiply-accumulates of layers whose weights *and* inputs are binary; FLOPs = MACs of
every other conv / linear (first conv, FP shortcuts, FC, 1w32a / 32w1a layers);
OPs = BOPs / 64 + FLOPs. BatchNorm, scaling, activations, pooling and additions count 0,
as in both papers (this reproduces their published counts, see docs/models.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from onebit.nn import BATCHNORMS
from onebit.nn.binary import BinaryLayer, is_binary


@dataclass
class LayerRecord:
    """One call of a leaf layer in a forward pass: its input and output shapes."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, BinaryLayer) or not any(True for _ in module.children())


@torch.no_grad()
def trace_layers(model: nn.Module, input_size: tuple[int, ...]) -> list[LayerRecord]:
    """Run one eval-mode forward of zeros of ``input_size`` (N, C, H, W) and record every leaf
    layer's input and output shape, in call order (a layer called twice appears twice)."""
    records: list[LayerRecord] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        shape_in = tuple(inputs[0].shape) if inputs and torch.is_tensor(inputs[0]) else ()
        shape_out = tuple(output.shape) if torch.is_tensor(output) else ()
        records.append(LayerRecord(names[module], module, shape_in, shape_out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_leaf(m)]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return records


def layer_macs(module: nn.Module, output_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one call of a conv / linear layer, for the whole batch:
    conv: output elements x (C_in / groups) x k_h x k_w; linear: output elements x in_features.
    0 for every other layer."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return math.prod(output_shape) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return math.prod(output_shape) * module.in_features
    return 0


def is_bop_layer(module: nn.Module) -> bool:
    """True for a layer whose MACs are binary operations (1-bit weights and 1-bit inputs)."""
    return is_binary(module) and module.bits == "1w1a"


@dataclass
class OpsRow:
    """One call of a layer: its output shape and its MACs per image (binary or not)."""

    name: str
    type: str
    bits: str
    output_shape: tuple[int, ...]
    macs: int
    binary: bool

    @property
    def bops(self) -> int:
        return self.macs if self.binary else 0

    @property
    def flops(self) -> int:
        return 0 if self.binary else self.macs


@dataclass
class OpsReport:
    """Operation counts of one forward pass of one image (see the module docstring).

    ``bops``: binary MACs; ``flops``: full-precision MACs; ``ops`` = bops / 64 + flops;
    ``params``: parameter count; ``table``: one :class:`OpsRow` per call of a leaf layer.
    """

    bops: int
    flops: int
    params: int
    input_size: tuple[int, ...]
    table: list[OpsRow] = field(repr=False)

    @property
    def ops(self) -> float:
        return self.bops / 64 + self.flops

    def totals(self) -> str:
        """The totals in one line: BOPs, FLOPs and OPs per image."""
        return (
            f"per image ({'x'.join(map(str, self.input_size))}): "
            f"BOPs {self.bops:,} ({self.bops:.3g}), FLOPs {self.flops:,} ({self.flops:.3g}), "
            f"OPs = BOPs/64 + FLOPs = {self.ops:.3g}"
        )

    def __str__(self) -> str:
        rows = [
            [
                r.name,
                r.type,
                r.bits,
                "x".join(map(str, r.output_shape)),
                f"{r.bops:,}" if r.binary else "",
                "" if r.binary else f"{r.flops:,}",
            ]
            for r in self.table
            if r.macs
        ]
        headers = ["layer", "type", "bits", "output", "BOPs", "FLOPs"]
        return "\n".join(
            [_table(headers, rows, right={4, 5}), f"params: {self.params:,}", self.totals()]
        )


def _as_batch(input_size: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, H, W) of ``input_size`` ((C, H, W) or (N, C, H, W), positive integers); a
    ValueError naming it otherwise."""
    sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else None
    if (
        sizes is None
        or len(sizes) not in (3, 4)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
    ):
        raise ValueError(
            f"input_size {input_size!r} is not (C, H, W) or (N, C, H, W) of positive integers, "
            "e.g. (3, 32, 32)"
        )
    return sizes if len(sizes) == 4 else (1, *sizes)


def _ops_report(
    model: nn.Module, input_size: tuple[int, ...], records: list[LayerRecord]
) -> OpsReport:
    table = [
        OpsRow(
            r.name,
            type(r.module).__name__,
            layer_bits(r.module),
            r.output_shape[1:],
            layer_macs(r.module, r.output_shape) // input_size[0],
            is_bop_layer(r.module),
        )
        for r in records
    ]
    return OpsReport(
        bops=sum(r.bops for r in table),
        flops=sum(r.flops for r in table),
        params=sum(p.numel() for p in model.parameters()),
        input_size=input_size[1:],
        table=table,
    )


def count_ops(model: nn.Module, input_size: tuple[int, ...]) -> OpsReport:
    """Count BOPs, FLOPs and OPs of ``model`` on one image of ``input_size`` ((C, H, W) or
    (N, C, H, W); counts are per image), from the layer shapes of a real forward pass.

    Works for any model (registry models, ``binarize()``d ones, plain PyTorch): a layer's
    MACs are BOPs when it binarizes both weights and inputs, FLOPs otherwise.
    """
    input_size = _as_batch(input_size)
    return _ops_report(model, input_size, trace_layers(model, input_size))


def layer_bits(module: nn.Module) -> str:
    """``"1w1a"``-style bits of a conv/linear layer, ``""`` for layers without a weight matrix."""
    if isinstance(module, BinaryLayer):
        return module.bits
    return "32w32a" if isinstance(module, (nn.Conv2d, nn.Linear)) else ""


def deployed_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s own tensors in a graph file written by ``onebit.deploy.export``
    (their data: the file also aligns each tensor to 64 bytes and holds its op tables).

    A 1w1a layer (a ``bconv2d`` node) stores its weight signs 1 bit each, per output channel
    along (kh, kw, cin), each tap's channels rounded up to whole 64-bit words, and fp32
    ``out_scale`` and ``out_bias`` per output channel (alpha and bias folded in), plus
    ``act_bias`` per input channel where it binarizes sign(x + b). A BatchNorm is a per-channel
    fp32 scale and shift (BatchNorm folding into the binary layer before it is not counted).
    Every other parameter and persistent buffer takes 4 bytes per float (the file stores fp32).
    """
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}
    if isinstance(module, BATCHNORMS) and module.running_mean is not None:
        return 2 * 4 * module.num_features
    if not (is_binary(module) and module.weight_spec is not None and module.act_spec is not None):
        return sum(_file_bytes(t) for t in own.values())
    weight = module.weight
    cout, cin, taps = weight.shape[0], weight.shape[1], math.prod(weight.shape[2:])
    act_bias = getattr(module, "act_bias", None)
    return cout * taps * -(-cin // 64) * 8 + 2 * 4 * cout + (4 * cin if act_bias is not None else 0)


def _file_bytes(t: torch.Tensor) -> int:
    return t.numel() * (4 if t.is_floating_point() else t.element_size())


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row):
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(headers))
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows), rule])


def summary(model: nn.Module, input_size: tuple[int, ...]) -> str:
    """A per-layer table: name, type, bits, output shape, BOPs, FLOPs, parameters and deployed
    memory, with totals (operations per image as :func:`count_ops`; memory at 1 bit per
    binary weight, against fp32 for every weight). ``input_size`` is (C, H, W) or (N, C, H, W).
    """
    input_size = _as_batch(input_size)
    records = trace_layers(model, input_size)
    report = _ops_report(model, input_size, records)
    seen: set[nn.Module] = set()
    rows = []
    for r, op in zip(records, report.table, strict=True):
        first_call = r.module not in seen
        seen.add(r.module)
        params = sum(p.numel() for p in r.module.parameters(recurse=False)) if first_call else 0
        memory = deployed_bytes(r.module) if first_call else 0
        rows.append(
            [
                r.name,
                op.type,
                op.bits,
                "x".join(map(str, op.output_shape)),
                f"{op.bops:,}" if op.bops else "",
                f"{op.flops:,}" if op.flops else "",
                f"{params:,}",
                f"{memory:,}",
            ]
        )
    total_params = sum(p.numel() for p in model.parameters())
    binary_params = sum(
        m.weight.numel() for m in model.modules() if is_binary(m) and m.weight_spec is not None
    )
    memory = sum(deployed_bytes(m) for m in model.modules())
    headers = ["layer", "type", "bits", "output", "BOPs", "FLOPs", "params", "bytes"]
    return "\n".join(
        [
            _table(headers, rows, right={4, 5, 6, 7}),
            f"params: {total_params:,} ({binary_params:,} binary)",
            report.totals(),
            f"memory as deployed: {memory:,} bytes ({memory / 2**20:.2f} MiB); "
            f"fp32: {4 * total_params:,} bytes ({4 * total_params / max(memory, 1):.1f}x larger)",
        ]
    )
