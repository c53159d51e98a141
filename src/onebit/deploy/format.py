"""Format 1 of the ``.onebit`` file, before graph files (:mod:`onebit.deploy.graph`, format
2, which export now writes): a safetensors container with a JSON header, checked on every
read. :func:`check_format` tells the two apart and refuses format 1 with a line saying to
export again; the PyTorch engine (``engine.py``) still reads format 1 until the C runtime
replaces it.

Metadata keys: ``onebit`` (the JSON header below) and ``onebit_sha256`` (SHA-256 over the
header text and every tensor's name, dtype, shape and bytes, so any bit flip is detected).

Header::

    {"format": "onebit-deploy", "version": 1,
     "model": {"name": "resnet20", "options": {...}}      # or {"name": null, "class": "pkg.Net"}
     "fp_dtype": "float32" | "float16",                     # full-precision parts as stored
     "layers": [LayerDesc, ...],                            # every binary-weight layer
     "folded": ["stages.0.0.bn1", ...],                     # BatchNorms folded into a layer
     "input": {"channels": 1, "size": 32, "mean": [...], "std": [...], "transform": "pad",
               "raw_size": 28, "dataset": "fashion_mnist", "class_names": [...]} | null,
     "accuracy": {"val_top1": 91.9, ...}}                   # optional: the trained model's

Tensors: a layer with ``mode="packed"`` (1w1a, run by the xnor-popcount kernel) stores
``<name>.weight_bits`` (int64 [cout, kh, kw, ceil(cin/64)]), ``<name>.out_scale`` and
``<name>.out_bias`` (fp32 [cout]; weight scale x learned alpha x folded BatchNorm) and, for
ReActNet's RSign, ``<name>.act_bias`` (fp32 [cin]). A layer with ``mode="float"`` (binary
weights, real activations, or a shape the kernel does not run) stores ``<name>.weight_bits``
and ``<name>.weight_scale`` (fp32 [cout]); its other parameters are full-precision parts.
Every other tensor is the model's state dict entry of that name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from onebit.data.spec import InputSpec
from onebit.deploy.graph import is_graph_file
from onebit.deploy.packing import tail_mask, words_for
from onebit.errors import ExportError
from onebit.io import atomic_write

FORMAT = "onebit-deploy"
VERSION = 1
KINDS = ("conv2d", "linear")
MODES = ("packed", "float")
FP_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class LayerDesc:
    """One binary-weight layer of an exported model: where it is and how it runs."""

    name: str
    kind: str  # "conv2d" | "linear"
    mode: str  # "packed" (xnor-popcount kernel) | "float" (PyTorch, unpacked weights)
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    act: str | None  # activation binarizer name, None for real activations
    weight: str  # weight binarizer name
    act_bias: bool  # input binarized as sign(x + act_bias) (RSign)
    bn: str | None  # the BatchNorm folded into out_scale / out_bias

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: object, where: str) -> LayerDesc:
        """Validate one header entry; any deviation is an ExportError naming ``where``."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ExportError(f"{where}: a layer entry has missing or unknown keys")
        pairs = ("kernel_size", "stride", "padding", "dilation")
        for key in pairs:
            value = data[key]
            if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
                raise ExportError(f"{where}: layer {key} is not a pair of integers")
        for key in ("in_channels", "out_channels", "groups"):
            if not _is_int(data[key]) or not 1 <= data[key] <= 1 << 24:
                raise ExportError(f"{where}: layer {key} is not a positive integer")
        ok = (
            isinstance(data["name"], str)
            and data["name"]
            and data["kind"] in KINDS
            and data["mode"] in MODES
            and (data["act"] is None or isinstance(data["act"], str))
            and isinstance(data["weight"], str)
            and isinstance(data["act_bias"], bool)
            and (data["bn"] is None or isinstance(data["bn"], str))
            and all(1 <= v <= 1 << 16 for k in pairs if k != "padding" for v in data[k])
            and all(0 <= v <= 1 << 16 for v in data["padding"])
            and data["in_channels"] % data["groups"] == 0
            and data["out_channels"] % data["groups"] == 0
        )
        if not ok:
            raise ExportError(f"{where}: layer entry {data.get('name')!r} has an invalid value")
        return cls(**{k: tuple(v) if k in pairs else v for k, v in data.items()})

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of the tensors this layer stores (all fp32 but the int64 bits)."""
        kh, kw = self.kernel_size
        bits = (self.out_channels, kh, kw, words_for(self.in_channels // self.groups))
        shapes = {f"{self.name}.weight_bits": bits}
        if self.mode == "packed":
            shapes[f"{self.name}.out_scale"] = (self.out_channels,)
            shapes[f"{self.name}.out_bias"] = (self.out_channels,)
            if self.act_bias:
                shapes[f"{self.name}.act_bias"] = (self.in_channels,)
        else:
            shapes[f"{self.name}.weight_scale"] = (self.out_channels,)
        return shapes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digest(header_text: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(header_text.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write(path: str | Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write header + tensors to ``path`` atomically (:func:`onebit.io.atomic_write`)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(header, sort_keys=True)
    metadata = {"onebit": text, "onebit_sha256": _digest(text, tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def is_deploy_file(path: str | Path) -> bool:
    """True if ``path`` is a graph file (format 2) or a safetensors file with a onebit
    deployment header (format 1) (unchecked)."""
    try:
        with open(path, "rb") as f:
            if is_graph_file(f.read(8)):
                return True
        with safe_open(str(path), framework="pt") as f:
            return "onebit_sha256" in (f.metadata() or {})  # training checkpoints have none
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False


# a format-1 file's safetensors header is read to recognise it; real ones are a few 100 kB
_MAX_SAFETENSORS_HEADER = 100 << 20


def check_format(path: str | Path) -> None:
    """Raise ExportError unless ``path`` is a graph file (format 2). A format-1 file (a
    safetensors container with a ``onebit`` header, written by onebit before the graph
    format) gets one line saying to export the model again."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if is_graph_file(head):
                return
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            text = f.read(size) if 2 <= size <= _MAX_SAFETENSORS_HEADER else b""
    except OSError as err:
        raise ExportError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        header = json.loads(text) if text[:1] == b"{" else None
    except (ValueError, RecursionError):
        header = None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(metadata, dict) and "onebit" in metadata:
        raise ExportError(
            f"{path}: a format-1 .onebit file (safetensors, from an older onebit); this onebit "
            "runs graph files (format 2): export the model again with `onebit export RUN FILE`"
        )
    raise ExportError(f"{path}: not a .onebit file")


def read(path: str | Path) -> tuple[dict[str, Any], list[LayerDesc], dict[str, torch.Tensor]]:
    """Read and check a ``.onebit`` file: (header, layer descriptions, tensors).

    Raises ExportError for a missing, truncated, corrupt (checksum), foreign or
    wrong-version file, and for a header whose layers do not match the stored tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExportError(f"{path}: not a readable onebit file ({reason[:200]})") from None
    text = metadata.get("onebit")
    if text is None:
        raise ExportError(
            f"{path}: a safetensors file without a onebit header; export one with `onebit export`"
        )
    if metadata.get("onebit_sha256") != _digest(text, tensors):
        raise ExportError(f"{path}: checksum mismatch, the file is corrupt; export it again")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):  # malformed, too deep, a number past int limits
        raise ExportError(f"{path}: the onebit header is not valid JSON") from None
    layers = _check_header(header, str(path))
    _check_tensors(layers, tensors, header["fp_dtype"], str(path))
    return header, layers, tensors


def _check_header(header: object, where: str) -> list[LayerDesc]:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExportError(f"{where}: not a onebit deployment file")
    if header.get("version") != VERSION:
        raise ExportError(
            f"{where}: format version {header.get('version')!r}, this onebit reads version "
            f"{VERSION}; export the model again with this version"
        )
    model = header.get("model")
    if not (
        isinstance(model, dict)
        and "name" in model
        and (model["name"] is None or isinstance(model["name"], str))
        and isinstance(model.get("options"), dict)
        and isinstance(model.get("class", ""), str)
    ):
        raise ExportError(f"{where}: the header's model entry is malformed")
    fp_dtype = header.get("fp_dtype")
    if not isinstance(fp_dtype, str) or fp_dtype not in FP_DTYPES:
        raise ExportError(f"{where}: unknown fp_dtype {str(fp_dtype)[:40]!r}")
    layers, folded = header.get("layers"), header.get("folded")
    if not isinstance(layers, list) or not isinstance(folded, list):
        raise ExportError(f"{where}: the header has no layer list")
    if not all(isinstance(name, str) for name in folded):
        raise ExportError(f"{where}: the header's folded BatchNorms are not names")
    if header.get("input") is not None:
        InputSpec.from_json(header["input"], where)
    accuracy = header.get("accuracy", {})
    if not isinstance(accuracy, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in accuracy.items()
    ):
        raise ExportError(f"{where}: the header's accuracy entry is malformed")
    descs = [LayerDesc.from_json(entry, where) for entry in layers]
    names = [d.name for d in descs]
    bns = [d.bn for d in descs if d.bn is not None]
    if len(set(names)) != len(names) or sorted(bns) != sorted(folded) or len(set(bns)) != len(bns):
        raise ExportError(f"{where}: the header's layers and folded BatchNorms are inconsistent")
    return descs


def _check_tensors(
    layers: list[LayerDesc], tensors: dict[str, torch.Tensor], fp_dtype: str, where: str
) -> None:
    for desc in layers:
        for name, shape in desc.tensor_shapes().items():
            t = tensors.get(name)
            dtype = torch.int64 if name.endswith(".weight_bits") else torch.float32
            if t is None or t.dtype != dtype or tuple(t.shape) != shape:
                raise ExportError(f"{where}: tensor {name} is missing or has the wrong shape")
        bits = tensors[f"{desc.name}.weight_bits"]
        mask = tail_mask(desc.in_channels // desc.groups)
        if mask and bool((bits[..., -1] & mask).any()):
            raise ExportError(f"{where}: tensor {desc.name}.weight_bits has bits past its channels")
    allowed = {FP_DTYPES[fp_dtype], torch.int64, torch.float32}
    for name, t in tensors.items():
        if t.dtype not in allowed:
            raise ExportError(f"{where}: tensor {name} has dtype {t.dtype}, expected {fp_dtype}")
