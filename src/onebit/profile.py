"""Measure a model: per-layer shapes, parameters and deployed memory (``summary``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from onebit.nn.binary import _BinaryMixin, is_binary


@dataclass
class LayerRecord:
    """One leaf layer as seen in a real forward pass."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, _BinaryMixin) or not any(True for _ in module.children())


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


def layer_bits(module: nn.Module) -> str:
    """``"1w1a"``-style bits of a conv/linear layer, ``""`` for layers without a weight matrix."""
    if isinstance(module, _BinaryMixin):
        return module.bits
    return "32w32a" if isinstance(module, (nn.Conv2d, nn.Linear)) else ""


def deployed_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s own tensors in a file written by ``onebit.deploy.export``.

    A binarized weight is packed 1 bit each per output channel along (kh, kw, cin), each tap's
    channels rounded up to whole 64-bit words, plus the fp32 per-channel vectors stored with
    it (see onebit.deploy.format); every other parameter and persistent buffer (BatchNorm
    running statistics included) takes 4 bytes per float (the file stores fp32) or its
    dtype's size. BatchNorm folding is not counted: a BatchNorm folded into the binary layer
    before it is absent from the file.
    """
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}
    if not (is_binary(module) and module.weight_spec is not None):
        return sum(_file_bytes(t) for t in own.values())
    from onebit.deploy.export import describe

    desc = describe("layer", module)
    layer = sum(
        math.prod(shape) * (8 if name.endswith(".weight_bits") else 4)
        for name, shape in desc.tensor_shapes().items()
    )
    # a packed layer's alpha, bias and act_bias live in its out_scale / out_bias / act_bias
    rest = {} if desc.mode == "packed" else {k: v for k, v in own.items() if k != "weight"}
    return layer + sum(_file_bytes(t) for t in rest.values())


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
    """A per-layer table: name, type, bits, output shape, parameters and deployed memory,
    with totals (memory at 1 bit per binary weight, against fp32 for every weight)."""
    records = trace_layers(model, input_size)
    seen: set[nn.Module] = set()
    rows = []
    for r in records:
        first_call = r.module not in seen
        seen.add(r.module)
        params = sum(p.numel() for p in r.module.parameters(recurse=False)) if first_call else 0
        memory = deployed_bytes(r.module) if first_call else 0
        rows.append(
            [
                r.name,
                type(r.module).__name__,
                layer_bits(r.module),
                "x".join(map(str, r.output_shape[1:])),
                f"{params:,}",
                f"{memory:,}",
            ]
        )
    total_params = sum(p.numel() for p in model.parameters())
    binary_params = sum(
        m.weight.numel() for m in model.modules() if is_binary(m) and m.weight_spec is not None
    )
    memory = sum(deployed_bytes(m) for m in model.modules())
    table = _table(["layer", "type", "bits", "output", "params", "bytes"], rows, right={4, 5})
    return "\n".join(
        [
            table,
            f"params: {total_params:,} ({binary_params:,} binary)",
            f"memory as deployed: {memory:,} bytes ({memory / 2**20:.2f} MiB); "
            f"fp32: {4 * total_params:,} bytes ({4 * total_params / max(memory, 1):.1f}x larger)",
        ]
    )
