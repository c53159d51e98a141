"""Speed and size of the C runtime against PyTorch fp32, measured in one process.

``onebit bench`` and ``benchmarks/kernel_speed.py`` print these tables. Every time is the
best of repeated calls over ``min_time`` seconds (after warm-up), with
``torch.get_num_threads()`` threads for PyTorch and the runtime alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from onebit.deploy.engine import load, select_kernel
from onebit.deploy.export import export
from onebit.deploy.graph import InputRecord, Node, graph_bytes
from onebit.deploy.packing import pack_weight
from onebit.deploy.runtime import Runtime

# (channels, height = width) of ResNet-18's binary 3x3 convs, stride 1, padding 1
RESNET18_CONVS = ((64, 56), (128, 28), (256, 14), (512, 7))
# the model families the whole-model table covers by default (CIFAR-scale until the ImageNet
# families are in the registry)
DEFAULT_MODELS = ("resnet20", "resnet18_cifar", "vgg_small", "firnet20", "firnet18_cifar")


def best_time(fn: Callable[[], object], min_time: float) -> float:
    """Seconds of the fastest of repeated ``fn()`` calls (two warm-up calls, then at least
    three timed ones, until ``min_time`` seconds have passed)."""
    fn()
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@dataclass
class ConvRow:
    """One binary 3x3 conv shape: PyTorch fp32 (ms, per memory format) vs the runtime's bconv2d
    node (binarize + pack the input, xnor-popcount conv, scale/bias epilogue: what a deployed
    layer does per call)."""

    channels: int
    size: int
    batch: int
    torch_nchw: float
    torch_nhwc: float
    onebit: float

    @property
    def ratio(self) -> float:
        """Best PyTorch time / onebit time."""
        return min(self.torch_nchw, self.torch_nhwc) / self.onebit


def bconv_graph(channels: int, size: int, weight: torch.Tensor) -> bytes:
    """A graph file of one binary 3x3 conv (stride 1, padding 1) of ``weight``'s signs (its
    output flattened: a graph ends in (N, outputs, 1, 1))."""
    attrs = {"stride_h": 1, "stride_w": 1, "pad_h": 1, "pad_w": 1, "dil_h": 1, "dil_w": 1}
    slots = {"weight_bits": "w", "out_scale": "s", "out_bias": "b"}
    tensors = {
        "w": pack_weight(weight < 0).numpy().view(np.uint64),
        "s": np.ones(channels, np.float32),
        "b": np.zeros(channels, np.float32),
    }
    nodes = [Node("bconv2d", [0], slots, attrs, name="bench"), Node("flatten", [1], name="out")]
    record = InputRecord(channels, size, size, channels * size * size)
    return graph_bytes(nodes, tensors, record, {})


def conv_rows(
    shapes: Sequence[tuple[int, int]] = RESNET18_CONVS,
    batches: Sequence[int] = (1, 8),
    min_time: float = 0.5,
    kernel: str | None = None,
) -> list[ConvRow]:
    """Time PyTorch's fp32 3x3 conv and the runtime's binary conv on each shape, both at
    ``torch.get_num_threads()`` threads."""
    kernel = select_kernel(kernel)
    rows = []
    for channels, size in shapes:
        weight = torch.randn(channels, channels, 3, 3)
        runtime = Runtime.from_bytes(bconv_graph(channels, size, weight), where="bench")
        runtime.set_kernel(kernel)
        if torch.get_num_threads() > 1:
            runtime.set_threads(torch.get_num_threads())
        for batch in batches:
            x = torch.randn(batch, channels, size, size)
            xl = x.contiguous(memory_format=torch.channels_last)
            torch_conv = partial(F.conv2d, weight=weight, padding=1)
            calls = [partial(torch_conv, x), partial(torch_conv, xl), partial(runtime, x.numpy())]
            with torch.no_grad():
                times = [best_time(call, min_time) for call in calls]
            rows.append(ConvRow(channels, size, batch, *(1e3 * t for t in times)))
        runtime.close()
    return rows


@dataclass
class ModelRow:
    """One model at one batch size: latency (ms) and file size (bytes)."""

    model: str
    batch: int
    fp32_ms: float  # the full-precision twin (method="fp") in PyTorch
    binary_float_ms: float  # the 1w1a model as trained, in PyTorch (eval)
    deployed_ms: float  # onebit.deploy.load(...) of its export
    checkpoint_bytes: int  # the 1w1a model's fp32 state dict as safetensors
    onebit_bytes: int  # the exported .onebit file

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.deployed_ms

    @property
    def size_ratio(self) -> float:
        return self.checkpoint_bytes / self.onebit_bytes


def model_rows(
    models: Sequence[str] = DEFAULT_MODELS,
    batches: Sequence[int] = (1, 8),
    min_time: float = 0.5,
    kernel: str | None = None,
) -> list[ModelRow]:
    """Whole-model latency of each registry model: FP twin vs the 1w1a model in PyTorch vs
    its deployed export (each the best of NCHW and channels-last input), and the size of its
    fp32 checkpoint vs the ``.onebit`` file."""
    from onebit.models import create_model, default_input_size

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            binary = create_model(name, bits="1w1a").eval()
            twin = create_model(name, method="fp").eval()
            ckpt, packed = Path(tmp, "model.safetensors"), Path(tmp, "model.onebit")
            save_file({k: v.contiguous() for k, v in binary.state_dict().items()}, ckpt)
            export(binary, packed)
            deployed = load(packed, kernel=kernel, threads=torch.get_num_threads())
            for batch in batches:
                x = torch.randn(batch, *default_input_size(name))
                # each network at its faster memory format (NCHW or channels-last), as the
                # per-layer table; PyTorch's NCHW max-pool alone is ~10x its channels-last one
                inputs = (x, x.contiguous(memory_format=torch.channels_last))
                with torch.no_grad():
                    times = [
                        min(best_time(partial(m, xi), min_time) for xi in inputs)
                        for m in (twin, binary)
                    ]
                    times.append(best_time(partial(deployed, x.numpy()), min_time))
                sizes = (ckpt.stat().st_size, packed.stat().st_size)
                rows.append(ModelRow(name, batch, *(1e3 * t for t in times), *sizes))
    return rows


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def format_conv_rows(rows: Sequence[ConvRow]) -> str:
    headers = [
        "shape",
        "batch",
        "torch NCHW",
        "torch NHWC",
        "onebit",
        "speedup",
    ]
    body = [
        [
            f"{r.channels}x{r.size}x{r.size}",
            str(r.batch),
            *(f"{t:.3f}" for t in (r.torch_nchw, r.torch_nhwc, r.onebit)),
            f"{r.ratio:.1f}x",
        ]
        for r in rows
    ]
    return _table(headers, body)


def format_model_rows(rows: Sequence[ModelRow]) -> str:
    headers = [
        "model",
        "batch",
        "fp32 twin",
        "1w1a torch",
        "deployed",
        "speedup",
        "fp32 ckpt",
        ".onebit",
        "smaller",
    ]
    body = [
        [
            r.model,
            str(r.batch),
            *(f"{t:.2f}" for t in (r.fp32_ms, r.binary_float_ms, r.deployed_ms)),
            f"{r.speedup:.1f}x",
            f"{r.checkpoint_bytes / 2**20:.2f} MiB",
            f"{r.onebit_bytes / 2**20:.2f} MiB",
            f"{r.size_ratio:.1f}x",
        ]
        for r in rows
    ]
    return _table(headers, body)
