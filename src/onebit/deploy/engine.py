"""``load(path) -> DeployedModel``: a ``.onebit`` graph file run by the onebit C runtime.

The file is the network (:mod:`onebit.deploy.graph`): the runtime (``runtime/`` in the
repository, C11, libc only) checks and plans it at load and runs it with xnor-popcount kernels;
this module is a thin layer over its binding (:mod:`onebit.deploy.runtime`) that adds raw-image
preprocessing and takes numpy arrays or torch tensors. Loading a file runs no Python code of the
model and imports nothing.

Kernels of the binary convolutions: ``"avx512"`` (VPOPCNTDQ), ``"avx2"``, ``"neon"`` (aarch64),
``"portable"`` (any CPU), chosen at run time, best first; the environment variable
``ONEBIT_KERNEL`` or ``load(..., kernel=...)`` forces one. All give bit-identical results.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onebit.deploy import format as fmt
from onebit.deploy.graph import InputRecord, Node, graph_bytes, read_graph
from onebit.deploy.runtime import Runtime
from onebit.errors import ExportError
from onebit.input_spec import InputSpec
from onebit.user_code import import_modules

KERNEL_ENV = "ONEBIT_KERNEL"
KERNELS = ("avx512", "avx2", "neon", "portable")


@functools.cache
def available_kernels() -> list[str]:
    """The binary conv kernels this machine's runtime runs, best first."""
    probe = graph_bytes(
        [Node("relu", [0], name="probe")], {}, InputRecord(1, 1, 1, 1), {"format": "probe"}
    )
    with Runtime.from_bytes(probe, where="kernel probe") as rt:
        found = []
        for name in KERNELS:
            try:
                rt.set_kernel(name)
            except ExportError:
                continue
            found.append(name)
    return found


def select_kernel(name: str | None = None) -> str:
    """Resolve ``name`` (or ``$ONEBIT_KERNEL``, or ``"auto"``) to a kernel this machine runs."""
    requested = name or os.environ.get(KERNEL_ENV) or "auto"
    available = available_kernels()
    if requested == "auto":
        return available[0]
    if requested not in KERNELS:
        raise ExportError(
            f"unknown kernel {requested!r} (from {'kernel=' if name else KERNEL_ENV}); "
            f"choose one of: auto, {', '.join(KERNELS)}"
        )
    if requested not in available:
        raise ExportError(
            f"kernel {requested!r} does not run on this CPU or build; available here: "
            f"{', '.join(available)}"
        )
    return requested


class DeployedModel:
    """What :func:`load` returns: the graph file's network, run by the C runtime.

    Call it on a normalised float batch (N, C, H, W), a numpy array or a torch tensor (the
    result is of the same kind, float32 logits (N, classes)); ``input_spec.describe()`` says
    which batch. ``predict(images)`` takes raw images instead (uint8 or [0, 1] floats at the
    dataset's own size) and returns class indices; ``preprocess(images)`` is its first half.
    ``meta`` is the file's metadata (model, input spec, layers, accuracy), ``kernel`` the
    binary conv kernel in use, ``class_names`` the class names (None where unknown).
    """

    def __init__(self, runtime: Runtime, meta: dict[str, Any], path: str):
        self.runtime = runtime
        self.meta = meta
        self.path = path
        spec = meta.get("input")
        self.input_spec = None if spec is None else InputSpec.from_json(spec, path)
        if self.input_spec is not None:
            _check_spec(self.input_spec, runtime, path)
        self.class_names = self.input_spec.class_names if self.input_spec else None

    @property
    def kernel(self) -> str:
        return self.runtime.kernel

    @property
    def num_classes(self) -> int:
        return self.runtime.num_outputs

    def __call__(self, x: Any) -> Any:
        is_torch = type(x).__module__.startswith("torch")
        if is_torch:
            if x.device.type == "meta":
                raise ValueError("the deployed model got a meta tensor, which holds no values")
            if x.is_floating_point() and x.itemsize < 4:  # bfloat16 / float16: exact in fp32
                x = x.float()
        array = x.detach().cpu().numpy() if is_torch else np.asarray(x)
        if array.ndim != 4 or array.dtype.kind != "f":
            raise ValueError(
                f"the deployed model takes {self._expected()}; got {array.dtype} {array.shape}"
            )
        if len(array) == 0:
            raise ValueError("the deployed model got an empty batch (0 images)")
        if tuple(array.shape[1:]) != self.runtime.input_shape:
            raise ValueError(
                f"the deployed model takes {self._expected()}; got shape {tuple(array.shape)}"
            )
        logits = self.runtime(array)
        if is_torch:
            import torch

            return torch.from_numpy(logits)
        return logits

    def _expected(self) -> str:
        c, h, w = self.runtime.input_shape
        text = f"float batches (N, {c}, {h}, {w})"
        if self.input_spec is not None:
            text += f", {self.input_spec.describe()}; predict(images) takes raw images"
        return text

    def preprocess(self, images: Any) -> Any:
        """Raw images (see :meth:`onebit.data.InputSpec.preprocess`) -> the network's batch."""
        if self.input_spec is None:
            raise ValueError(
                "this .onebit file has no input spec; call the model on normalised batches"
            )
        return self.input_spec.preprocess(images)

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Class indices (int64, one per image) of raw ``images``; names: ``class_names``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r} is not a positive whole number")
        x = np.asarray(self.preprocess(images), dtype=np.float32)
        out = [self.runtime(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    # An inference-only network, as onebit.train.evaluate expects of a model.
    training = False

    def eval(self) -> DeployedModel:
        return self

    def train(self, mode: bool = True) -> DeployedModel:
        return self

    def set_threads(self, threads: int) -> None:
        self.runtime.set_threads(threads)

    def close(self) -> None:
        self.runtime.close()


def _check_spec(spec: InputSpec, runtime: Runtime, path: str) -> None:
    """The meta's input spec (what ``predict`` does) must say what the header's input record
    (what the runtime and ``onebit-run`` do) says; ExportError if not."""
    record = runtime.input_record
    raw = spec.raw_size or 0
    mine = (spec.channels, spec.size, spec.size, spec.transform)
    theirs = (record.channels, record.height, record.width, record.transform)
    pad_raw = (record.raw_height, record.raw_width) == (raw, raw) or spec.transform != "pad"
    close = all(
        abs(a - b) <= 1e-6 * max(1.0, abs(a))
        for a, b in zip((*spec.mean, *spec.std), (*record.mean, *record.std), strict=False)
    )
    same_count = len(spec.mean) == len(record.mean)
    if mine != theirs or not pad_raw or not close or not same_count:
        raise ExportError(
            f"{path}: its input spec ({spec.describe()}, transform {spec.transform}) "
            "contradicts the input record the runtime reads; the file was edited or damaged: "
            "export the model again"
        )


def load(
    path: str | Path,
    *,
    kernel: str | None = None,
    threads: int = 1,
    imports: Sequence[str] = (),
) -> DeployedModel:
    """Load a ``.onebit`` graph file as a runnable :class:`DeployedModel`.

    ``kernel``: see :func:`select_kernel`; ``threads``: threads of the runtime's ops (OpenMP).
    A malformed or damaged file raises ExportError with one line; a file of the previous
    format (format 1) says how to export it again. The file runs no code and imports nothing:
    ``imports`` (modules to import first, searched on ``sys.path``) is only for a caller that
    wants its own modules loaded beside it.
    """
    import_modules(imports, source="onebit.deploy.load(imports=...)", allowed=imports)
    fmt.check_format(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ExportError(f"{path}: {err.strerror or err}") from None
    _, _, _, meta = read_graph(data, str(path))
    runtime = Runtime.from_bytes(data, where=str(path))
    runtime.set_kernel(select_kernel(kernel))
    if threads != 1:
        runtime.set_threads(threads)
    return DeployedModel(runtime, meta, str(path))
