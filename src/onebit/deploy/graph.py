"""The ``.onebit`` graph file (format 2): the network as a list of ops, read by the C runtime.

A file is one little-endian binary blob; every offset and size in it is checked before use.

    header   (HEADER_SIZE bytes, struct HEADER below)
    tensors  n_tensors entries of TENSOR_SIZE bytes (struct TENSOR)
    nodes    n_nodes entries of NODE_SIZE bytes (struct NODE)
    meta     UTF-8 JSON (model name and options, layer names, class names, accuracy): read by
             Python, skipped by the C runtime (only its bounds are checked)
    data     the tensors' bytes, each at a multiple of ALIGN from the data offset

``crc32`` (zlib's) covers every byte after the first 32 (the header's magic, version, sizes and
the checksum itself), so a flipped bit anywhere is an error, not a wrong answer.

Values: every value is a float32 NCHW tensor (N, C, H, W); a vector is (N, C, 1, 1). Value 0
is the graph's input (N, in_c, in_h, in_w); node k (0-based) writes value k + 1 and reads only
values <= k, so the graph is in topological order by construction (no cycle can be written).
The output is the last node's value, (N, num_classes, 1, 1): the logits.

Ops (``OPS``: code, inputs, tensor slots, integer and float attributes), semantics as PyTorch's:

    conv2d          x; weight f32 (cout, cin/groups, kh, kw), bias f32 (cout) | none;
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups (zero padding)
    bconv2d         x; weight_bits u64 (cout, kh, kw, ceil(cin/64)), out_scale f32 (cout),
                    out_bias f32 (cout), act_bias f32 (cin) | none; stride_h, stride_w, pad_h,
                    pad_w, dil_h, dil_w. a = sign(x + act_bias) in {-1, +1} (sign(0) = +1),
                    zero padding (a padded tap adds 0), dot = sum a * w over the taps,
                    y = dot * out_scale + out_bias (float32, no FMA). Bit c % 64 of word c / 64
                    of a weight's tap is 1 for -1, 0 for +1; bits past cin are 0.
                    A binary linear is a bconv2d with kh = kw = 1 on an (N, C, 1, 1) value.
    linear          x (N, in, 1, 1); weight f32 (out, in), bias f32 (out) | none
    affine          x; scale f32 (C) | none, bias f32 (C) | none: y = x * scale + bias per
                    channel (an unfolded BatchNorm, LearnableBias)
    add             a, b of one shape
    mul             a, b: b of a's shape or (N, C, 1, 1), broadcast over H, W
    relu, sigmoid   x
    hardtanh        x; min_val, max_val (f32)
    prelu           x; slope f32 (C) or (1)
    leaky_clip      x: clamp(x, -1, 1) + 0.1 (x - clamp(x, -1, 1))
    maxpool2d       x; kh, kw, stride_h, stride_w, pad_h, pad_w, ceil_mode (padding is -inf)
    avgpool2d       x; kh, kw, stride_h, stride_w, pad_h, pad_w, ceil_mode, count_include_pad
    global_avgpool  x -> (N, C, 1, 1)
    flatten         x -> (N, C * H * W, 1, 1), in NCHW order
    concat          2 to 4 inputs of one N, H, W, along the channels
    channel_shuffle x; groups: channel g * (C / groups) + i goes to i * groups + g
    subsample_pad   x; stride_h, stride_w, pad_before, pad_after:
                    x[:, :, ::stride_h, ::stride_w] with zero channels before and after;
                    a negative pad removes channels, as F.pad's (channel slicing x[:, a:b],
                    a split): output channel o is input channel o - pad_before, or 0
                    outside [0, C); C + pad_before + pad_after >= 1
    rescale_hw      x; scale f32 (1, C, H, W): y = x * scale (LearnedRescale, factors multiplied)
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onebit.errors import ExportError
from onebit.io import atomic_write

MAGIC = b"ONEBITGR"
VERSION = 2
ALIGN = 64
MAX_INPUTS, MAX_TENSORS, MAX_IATTR, MAX_FATTR = 4, 6, 12, 4

# header: magic, version, header_size, file_size, crc32, reserved, n_tensors, n_nodes,
# tensor_offset, node_offset, meta_offset, meta_size, data_offset, data_size,
# in_c, in_h, in_w, transform, raw_h, raw_w, num_classes, reserved, mean[4], std[4]
HEADER = struct.Struct("<8sIIQIIIIQQQQQQIIIIIIII4f4f")
HEADER_SIZE = HEADER.size
# tensor: dtype, ndim, dims[4], offset (from data_offset), nbytes
TENSOR = struct.Struct("<II4IQQ")
TENSOR_SIZE = TENSOR.size
# node: op, n_inputs, inputs[4], tensors[6], iattr[12], fattr[4], reserved[4]
NODE = struct.Struct("<II4i6i12i4f4I")
NODE_SIZE = NODE.size
CRC_FROM = 32  # the checksum covers bytes [CRC_FROM, file_size)

DTYPES = {"f32": (1, np.float32), "u64": (2, np.uint64), "i32": (3, np.int32)}
TRANSFORMS = {"none": 0, "pad": 1, "resize_crop": 2}


@dataclass(frozen=True)
class OpSpec:
    code: int
    inputs: tuple[int, int]  # min, max
    tensors: tuple[str, ...]  # slot names; a name ending in "?" may be absent
    iattr: tuple[str, ...] = ()
    fattr: tuple[str, ...] = ()


_POOL = ("kh", "kw", "stride_h", "stride_w", "pad_h", "pad_w", "ceil_mode")
_CONV = ("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w")
OPS: dict[str, OpSpec] = {
    "conv2d": OpSpec(1, (1, 1), ("weight", "bias?"), (*_CONV, "groups")),
    "bconv2d": OpSpec(2, (1, 1), ("weight_bits", "out_scale", "out_bias", "act_bias?"), _CONV),
    "linear": OpSpec(3, (1, 1), ("weight", "bias?")),
    "affine": OpSpec(4, (1, 1), ("scale?", "bias?")),
    "add": OpSpec(5, (2, 2), ()),
    "mul": OpSpec(6, (2, 2), ()),
    "relu": OpSpec(7, (1, 1), ()),
    "sigmoid": OpSpec(8, (1, 1), ()),
    "hardtanh": OpSpec(9, (1, 1), (), (), ("min_val", "max_val")),
    "prelu": OpSpec(10, (1, 1), ("slope",)),
    "leaky_clip": OpSpec(11, (1, 1), ()),
    "maxpool2d": OpSpec(12, (1, 1), (), _POOL),
    "avgpool2d": OpSpec(13, (1, 1), (), (*_POOL, "count_include_pad")),
    "global_avgpool": OpSpec(14, (1, 1), ()),
    "flatten": OpSpec(15, (1, 1), ()),
    "concat": OpSpec(16, (2, 4), ()),
    "channel_shuffle": OpSpec(17, (1, 1), (), ("groups",)),
    "subsample_pad": OpSpec(18, (1, 1), (), ("stride_h", "stride_w", "pad_before", "pad_after")),
    "rescale_hw": OpSpec(19, (1, 1), ("scale",)),
}
OP_NAMES = {spec.code: name for name, spec in OPS.items()}


@dataclass
class Node:
    """One op: ``inputs`` are value ids (0: the graph input, k: node k - 1's output),
    ``tensors`` the names of its tensors by slot (None: absent), ``name`` the PyTorch module or
    function it came from (kept in the meta, for messages)."""

    op: str
    inputs: list[int]
    tensors: dict[str, str] = field(default_factory=dict)
    iattr: dict[str, int] = field(default_factory=dict)
    fattr: dict[str, float] = field(default_factory=dict)
    name: str = ""


@dataclass
class InputRecord:
    """The input the graph takes and how raw images become it (the C CLI reads this)."""

    channels: int
    height: int
    width: int
    num_classes: int
    transform: str = "none"
    raw_height: int = 0
    raw_width: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def _node_bytes(node: Node, tensor_ids: dict[str, int]) -> bytes:
    spec = OPS.get(node.op)
    if spec is None:
        raise ExportError(f"{node.name or 'a node'}: op {node.op!r} is not one the runtime runs")
    if not spec.inputs[0] <= len(node.inputs) <= spec.inputs[1]:
        raise ExportError(f"{node.name}: {node.op} takes {spec.inputs} inputs")
    slots = []
    for slot in spec.tensors:
        name = node.tensors.get(slot.rstrip("?"))
        if name is None and not slot.endswith("?"):
            raise ExportError(f"{node.name}: {node.op} needs its tensor {slot}")
        slots.append(-1 if name is None else tensor_ids[name])
    unknown = set(node.tensors) - {s.rstrip("?") for s in spec.tensors}
    unknown |= set(node.iattr) - set(spec.iattr)
    unknown |= set(node.fattr) - set(spec.fattr)
    if unknown:
        raise ExportError(f"{node.name}: {node.op} has no slot or attribute {sorted(unknown)}")
    inputs = [*node.inputs, *[-1] * (MAX_INPUTS - len(node.inputs))]
    tensors = [*slots, *[-1] * (MAX_TENSORS - len(slots))]
    iattr = [int(node.iattr.get(k, 0)) for k in spec.iattr]
    fattr = [float(node.fattr.get(k, 0.0)) for k in spec.fattr]
    iattr += [0] * (MAX_IATTR - len(iattr))
    fattr += [0.0] * (MAX_FATTR - len(fattr))
    return NODE.pack(spec.code, len(node.inputs), *inputs, *tensors, *iattr, *fattr, 0, 0, 0, 0)


def graph_bytes(
    nodes: list[Node],
    tensors: dict[str, np.ndarray],
    input_record: InputRecord,
    meta: dict[str, Any],
) -> bytes:
    """The file's bytes. ``tensors`` maps names to float32, uint64 or int32 arrays of 1 to 4
    dimensions; the meta gets the node and tensor names."""
    for k, node in enumerate(nodes):
        if any(not 0 <= v <= k for v in node.inputs):
            raise ExportError(f"{node.name}: node {k} reads a value not computed before it")
    names = list(tensors)
    ids = {name: i for i, name in enumerate(names)}
    meta = {**meta, "nodes": [n.name for n in nodes], "tensors": names}
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    table, blobs, offset = [], [], 0
    for name in names:
        array = np.ascontiguousarray(tensors[name])
        kind = next((k for k, (_, t) in DTYPES.items() if array.dtype == t), None)
        if kind is None or not 1 <= array.ndim <= 4:
            raise ExportError(
                f"tensor {name}: {array.dtype} with {array.ndim} dims is not storable"
            )
        dims = [*array.shape, *[1] * (4 - array.ndim)]
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        table.append(TENSOR.pack(DTYPES[kind][0], array.ndim, *dims, offset, len(raw)))
        blobs.append(raw + b"\0" * (-len(raw) % ALIGN))
        offset += len(blobs[-1])
    node_table = b"".join(_node_bytes(n, ids) for n in nodes)
    tensor_offset = HEADER_SIZE
    node_offset = tensor_offset + len(table) * TENSOR_SIZE
    meta_offset = node_offset + len(node_table)
    data_offset = meta_offset + len(meta_bytes)
    data_offset += -data_offset % ALIGN
    file_size = data_offset + offset
    r = input_record
    mean = [*r.mean, *[0.0] * (4 - len(r.mean))][:4]
    std = [*r.std, *[1.0] * (4 - len(r.std))][:4]
    head = [r.channels, r.height, r.width, TRANSFORMS[r.transform], r.raw_height, r.raw_width]
    body = b"".join(
        [
            b"".join(table),
            node_table,
            meta_bytes,
            b"\0" * (data_offset - meta_offset - len(meta_bytes)),
            *blobs,
        ]
    )
    fields = [len(names), len(nodes), tensor_offset, node_offset, meta_offset, len(meta_bytes)]
    fields += [data_offset, offset, *head, r.num_classes, 0, *mean, *std]
    header = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, file_size, 0, 0, *fields)
    crc = zlib.crc32(header[CRC_FROM:] + body)
    header = header[:24] + struct.pack("<I", crc) + header[28:]
    return header + body


def write_graph(
    path: str | Path,
    nodes: list[Node],
    tensors: dict[str, np.ndarray],
    input_record: InputRecord,
    meta: dict[str, Any],
) -> None:
    """Write the graph file atomically (a temporary file, then a rename)."""
    atomic_write(path, graph_bytes(nodes, tensors, input_record, meta))


def is_graph_file(head: bytes) -> bool:
    return head[:8] == MAGIC


def read_graph(
    data: bytes, where: str
) -> tuple[list[Node], dict[str, np.ndarray], InputRecord, dict[str, Any]]:
    """Parse a graph file's bytes: (nodes, tensors by name, input record, meta).

    Checks what the C runtime checks before it uses a number: the header, the checksum, every
    section's bounds, every tensor's dtype, dims and bytes, every node's op, inputs (values
    computed before it), tensor slots (present where required, of the slot's dtype) and unused
    fields (zero), and the meta's node and tensor names. Any problem is an ExportError naming
    ``where``. The tensors are read-only views of ``data``.
    """

    def bad(what: str) -> ExportError:
        return ExportError(f"{where}: {what}")

    if len(data) < HEADER_SIZE or data[:8] != MAGIC:
        raise bad("not a onebit graph file (no ONEBITGR header)")
    fields = HEADER.unpack_from(data)
    version, header_size, file_size, crc, reserved, n_tensors, n_nodes = fields[1:8]
    tensor_offset, node_offset, meta_offset, meta_size, data_offset, data_size = fields[8:14]
    in_c, in_h, in_w, transform, raw_h, raw_w, num_classes, reserved2 = fields[14:22]
    mean, std = fields[22:26], fields[26:30]
    if version != VERSION:
        raise bad(f"format version {version}, this onebit reads {VERSION}; export the model again")
    if header_size != HEADER_SIZE or reserved or reserved2:
        raise bad("the header's size or reserved fields are wrong")
    if file_size != len(data):
        raise bad(f"the header says {file_size} bytes, the file has {len(data)} (truncated?)")
    if zlib.crc32(memoryview(data)[CRC_FROM:]) != crc:
        raise bad("checksum mismatch, the file is corrupt; export it again")
    sections = [
        (tensor_offset, n_tensors * TENSOR_SIZE),
        (node_offset, n_nodes * NODE_SIZE),
        (meta_offset, meta_size),
        (data_offset, data_size),
    ]
    end = HEADER_SIZE
    for offset, size in sections:
        if offset < end or offset + size > file_size:
            raise bad("a table or section lies outside the file or overlaps another")
        end = offset + size
    if data_offset % ALIGN or end != file_size:
        raise bad("the data section is misaligned or does not end the file")
    counts = (n_nodes, in_c, in_h, in_w, num_classes)
    if not all(counts) or transform not in TRANSFORMS.values() or not np.isfinite(mean + std).all():
        raise bad("the input record or the node count is invalid")
    try:
        meta = json.loads(bytes(data[meta_offset : meta_offset + meta_size]).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("the meta is not valid UTF-8 JSON") from None
    names = meta.get("tensors") if isinstance(meta, dict) else None
    node_names = meta.get("nodes") if isinstance(meta, dict) else None
    if not (
        isinstance(names, list)
        and isinstance(node_names, list)
        and len(names) == n_tensors
        and len(node_names) == n_nodes
        and len(set(names)) == n_tensors
        and all(isinstance(n, str) for n in [*names, *node_names])
    ):
        raise bad("the meta's tensor and node names do not match the tables")
    tensors = [
        _read_tensor(data, tensor_offset, i, data_offset, data_size, bad) for i in range(n_tensors)
    ]
    kinds = {code: kind for kind, (code, _) in DTYPES.items()}
    nodes = []
    for k in range(n_nodes):
        raw = NODE.unpack_from(data, node_offset + k * NODE_SIZE)
        code, n_inputs = raw[0], raw[1]
        inputs, slots = raw[2:6], raw[6:12]
        iattr, fattr, reserved = raw[12:24], raw[24:28], raw[28:32]
        spec = OPS.get(OP_NAMES.get(code, ""))
        if spec is None:
            raise bad(f"node {k} ({node_names[k]}): unknown op code {code}")
        op = OP_NAMES[code]
        where_node = f"node {k} ({node_names[k]}, {op})"
        if not spec.inputs[0] <= n_inputs <= spec.inputs[1]:
            raise bad(f"{where_node}: {n_inputs} inputs")
        used, unused = inputs[:n_inputs], inputs[n_inputs:]
        if any(not 0 <= v <= k for v in used) or any(v != -1 for v in unused):
            raise bad(f"{where_node}: reads a value not computed before it")
        named = {}
        for slot, t in zip(spec.tensors, slots, strict=False):
            key = slot.rstrip("?")
            if t == -1 and slot.endswith("?"):
                continue
            if not 0 <= t < n_tensors:
                raise bad(f"{where_node}: tensor slot {key} is {t}")
            wanted = "u64" if key == "weight_bits" else "f32"
            if kinds[tensors[t][0]] != wanted:
                raise bad(f"{where_node}: tensor {names[t]} in slot {key} is not {wanted}")
            named[key] = names[t]
        if any(v != -1 for v in slots[len(spec.tensors) :]) or any(iattr[len(spec.iattr) :]):
            raise bad(f"{where_node}: an unused tensor slot or attribute is set")
        if any(fattr[len(spec.fattr) :]) or any(reserved) or not all(np.isfinite(fattr)):
            raise bad(f"{where_node}: an unused or non-finite float attribute")
        nodes.append(
            Node(
                op,
                list(inputs[:n_inputs]),
                named,
                dict(zip(spec.iattr, iattr, strict=False)),
                dict(zip(spec.fattr, fattr, strict=False)),
                node_names[k],
            )
        )
    record = InputRecord(
        in_c,
        in_h,
        in_w,
        num_classes,
        next(name for name, code in TRANSFORMS.items() if code == transform),
        raw_h,
        raw_w,
        tuple(mean[: min(in_c, 4)]),
        tuple(std[: min(in_c, 4)]),
    )
    return nodes, {n: t[1] for n, t in zip(names, tensors, strict=True)}, record, meta


def _read_tensor(
    data: bytes, table: int, i: int, data_offset: int, data_size: int, bad: Any
) -> tuple[int, np.ndarray]:
    """Entry ``i`` of the tensor table at ``table``: (dtype code, the array viewing ``data``)."""
    code, ndim, *dims, offset, nbytes = TENSOR.unpack_from(data, table + i * TENSOR_SIZE)
    kind = next((np.dtype(t) for c, t in DTYPES.values() if c == code), None)
    if kind is None or not 1 <= ndim <= 4:
        raise bad(f"tensor entry {i}: dtype code {code} with {ndim} dims")
    if any(d < 1 for d in dims[:ndim]) or any(d != 1 for d in dims[ndim:]):
        raise bad(f"tensor entry {i}: dims {dims}")
    count = int(np.prod(dims[:ndim], dtype=object))
    if nbytes != count * kind.itemsize or offset % ALIGN or offset + nbytes > data_size:
        raise bad(f"tensor entry {i}: its bytes are misaligned or outside the data section")
    array = np.frombuffer(
        data, kind.newbyteorder("<"), count=count, offset=data_offset + offset
    ).reshape(dims[:ndim])
    return code, array
