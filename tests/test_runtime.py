"""The C runtime (runtime/) against PyTorch: every op of the graph format, chains of ops, the
onebit-run CLI, and hostile files (truncated, flipped, edited and re-checksummed, fuzzed under
AddressSanitizer) that must give an error, never a crash or a hang.

The runtime is built here with make into a temporary folder, so the tests run the sources of
this checkout; ``onebit.deploy.runtime`` loads it through ONEBIT_RUNTIME_LIB. The make flags are
ONEBIT_TEST_RUNTIME_MAKE's (default "OPENMP=1"; "CBLAS=1" or "" test those builds).
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ARM_TOOLS, missing_toolchain, require_arm_tools
from onebit.data.spec import InputSpec
from onebit.deploy import available_kernels, graph
from onebit.deploy.graph import CRC_FROM, HEADER, NODE_SIZE, TENSOR_SIZE, InputRecord, Node
from onebit.deploy.packing import pack_weight
from onebit.deploy.runtime import LIBRARY_ENV, Runtime
from onebit.errors import ExportError

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
MAKE_FLAGS = os.environ.get("ONEBIT_TEST_RUNTIME_MAKE", "OPENMP=1").split()
THREADS = 2 if "OPENMP=1" in MAKE_FLAGS else 1


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nice", "make", "-s", "-C", str(RUNTIME), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """runtime/ built into a temporary folder; the binding loads its library."""
    if shutil.which("make") is None or shutil.which("cc") is None:
        missing_toolchain("make and a C compiler are needed to build runtime/")
    out = tmp_path_factory.mktemp("runtime-build")
    done = _make(f"BUILD={out}", *MAKE_FLAGS)
    assert done.returncode == 0, done.stderr
    saved = os.environ.get(LIBRARY_ENV)
    os.environ[LIBRARY_ENV] = str(out / "libonebit.so")
    yield out
    if saved is None:
        del os.environ[LIBRARY_ENV]
    else:
        os.environ[LIBRARY_ENV] = saved


@pytest.fixture(autouse=True)
def _library(build):
    yield


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_graph(
    nodes: list[Node],
    tensors: dict[str, np.ndarray],
    x: np.ndarray,
    size: int,
    kernel: str = "auto",
):
    """The graph of ``nodes`` then a flatten, run on ``x`` with ``kernel`` (which also picks the
    float ops' code: ops.c float_isa): the last node's output, flattened to (N, size)."""
    nodes = [*nodes, Node("flatten", [len(nodes)])]
    data = graph.graph_bytes(nodes, tensors, InputRecord(*x.shape[1:], size), {})
    with Runtime.from_bytes(data) as rt:
        rt.set_kernel(kernel)
        return rt(x)


def check(nodes, tensors, x: np.ndarray, want: torch.Tensor, tol: float = 1e-5) -> None:
    """The runtime's output of ``nodes`` on ``x`` is ``want`` (tol 0: equal), with every kernel
    this CPU runs (each its own copy of the float ops: AVX-512, AVX2, the base ISA)."""
    want = want.detach().reshape(len(x), -1).numpy()
    for kernel in available_kernels():
        got = run_graph(nodes, tensors, x, want.shape[1], kernel)
        if tol == 0:
            np.testing.assert_array_equal(got, want, err_msg=kernel)
        else:
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=kernel)


# ------------------------------------------------------------------------------------- ops

CONV_ATTRS = ("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w")


def conv_attrs(stride=1, pad=0, dil=1) -> dict[str, int]:
    """The conv attributes; each of stride, pad, dil an int or an (h, w) pair."""

    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    return dict(zip(CONV_ATTRS, (*pair(stride), *pair(pad), *pair(dil)), strict=True))


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "pad", "dil", "groups", "bias"),
    [
        (3, 8, (3, 3), 1, 1, 1, 1, True),
        (4, 6, (3, 3), 2, 1, 1, 2, True),
        (6, 6, (3, 3), 1, 1, 1, 6, False),  # depthwise
        (5, 7, (3, 1), (2, 1), (0, 1), 1, 1, True),
        (4, 4, (3, 3), 1, 2, 2, 1, True),  # dilation
        (8, 5, (1, 1), 1, 0, 1, 1, False),  # pointwise: no im2col
        (3, 4, (5, 5), 3, 2, 1, 1, True),
        (70, 33, (3, 3), 1, 1, 1, 1, True),  # edge tiles of the GEMM
    ],
)
def test_conv2d(cin, cout, k, stride, pad, dil, groups, bias):
    x, w, b = rand(2, cin, 9, 10), rand(cout, cin // groups, *k, seed=1), rand(cout, seed=2)
    attrs = conv_attrs(stride, pad, dil) | {"groups": groups}
    slots = {"weight": "w", "bias": "b"} if bias else {"weight": "w"}
    a = attrs
    want = F.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(w),
        torch.from_numpy(b) if bias else None,
        stride=(a["stride_h"], a["stride_w"]),
        padding=(a["pad_h"], a["pad_w"]),
        dilation=(a["dil_h"], a["dil_w"]),
        groups=groups,
    )
    check([Node("conv2d", [0], slots, attrs)], {"w": w, "b": b}, x, want, 1e-4)


@pytest.mark.parametrize(
    ("cin", "k", "stride", "pad", "hw"),
    [
        (40, 3, 2, 1, (9, 41)),  # padded phase-split copy (21 wide), K = 360: two chunks of 256
        (40, 3, 2, 1, (50, 41)),  # the same, 525 outputs: A packed (pack_a)
        (300, 1, 1, 0, (5, 7)),  # pointwise in place, K = 300
        (30, 1, 1, 0, (20, 30)),  # pointwise, A packed
        (31, 3, 1, 1, (6, 7)),  # narrow: im2col, K = 279
        (3, 7, 2, 3, (20, 38)),  # a stem: K = 147, the padded copy
        (3, 7, 2, 3, (50, 64)),  # a stem, A packed
    ],
)
def test_conv2d_gemm_tiles_give_the_same_bits_on_every_kernel(cin, k, stride, pad, hw):
    """The float GEMM's tiles (AVX-512, AVX2, the portable C; NEON under qemu) take the same
    fused multiply-adds in the same order: equal outputs, whichever kernel a model runs; rows
    past a tile's 6 / 8 (13 channels), columns past its 16 / 32, K in chunks of 256, and A read
    in place or packed (outputs of 512 pixels or more)."""
    x, w, b = rand(2, cin, *hw), rand(13, cin, k, k, seed=1), rand(13, seed=2)
    want = F.conv2d(*map(torch.from_numpy, (x, w, b)), stride=stride, padding=pad)
    attrs = conv_attrs(stride, pad) | {"groups": 1}
    nodes = [Node("conv2d", [0], {"weight": "w", "bias": "b"}, attrs)]
    nodes.append(Node("flatten", [1]))
    size = want[0].numel()
    data = graph.graph_bytes(nodes, {"w": w, "b": b}, InputRecord(cin, *hw, size), {})
    with Runtime.from_bytes(data) as rt:
        outputs = {}
        for kernel in available_kernels():
            rt.set_kernel(kernel)
            outputs[kernel] = rt(x)
    first = next(iter(outputs.values()))
    np.testing.assert_allclose(first, want.reshape(2, -1).numpy(), rtol=1e-4, atol=1e-4)
    for kernel, got in outputs.items():
        np.testing.assert_array_equal(got, first, err_msg=kernel)


def bconv_reference(x, sign_w, scale, bias, act_bias, stride, pad, dil) -> torch.Tensor:
    """sign(x + act_bias) (sign(0) = +1) convolved with the +-1 weights, zero padding, then
    dot * scale + bias: the bconv2d op as graph.py defines it."""
    shifted = torch.from_numpy(x)
    if act_bias is not None:
        shifted = shifted + torch.from_numpy(act_bias)[:, None, None]
    a = torch.where(shifted >= 0, 1.0, -1.0)
    dot = F.conv2d(a, torch.from_numpy(sign_w), stride=stride, padding=pad, dilation=dil)
    return dot * torch.from_numpy(scale)[:, None, None] + torch.from_numpy(bias)[:, None, None]


def bconv_tensors(cin: int, cout: int, kh: int, kw: int, seed: int = 0):
    """+-1 weights (cout, cin, kh, kw), their packed bits (graph.py's layout), scale, bias."""
    sign_w = np.where(rand(cout, cin, kh, kw, seed=seed) < 0, -1.0, 1.0).astype(np.float32)
    bits = pack_weight(torch.from_numpy(sign_w < 0)).numpy().view(np.uint64)
    return sign_w, bits, rand(cout, seed=seed + 1), rand(cout, seed=seed + 2)


BCONV_SLOTS = {"weight_bits": "w", "out_scale": "s", "out_bias": "b"}


@pytest.mark.parametrize("cin", [3, 16, 65, 130])
@pytest.mark.parametrize(
    ("k", "stride", "pad", "dil", "act"),
    [
        (3, 1, 1, 1, False),
        (3, 2, 1, 1, True),
        (3, 1, 2, 2, True),  # dilation
        (1, 1, 0, 1, True),  # 1x1
        (1, 2, 0, 1, False),
        (3, 1, 0, 1, False),  # no padding
    ],
)
def test_bconv2d_equals_sign_conv(cin, k, stride, pad, dil, act):
    x = rand(2, cin, 7, 9, seed=cin)
    x[0, 0, 0, :3] = 0.0  # sign(0) = +1
    sign_w, bits, scale, bias = bconv_tensors(cin, 12, k, k, seed=cin + k)
    act_bias = rand(cin, seed=5) if act else None
    tensors = {"w": bits, "s": scale, "b": bias}
    slots = dict(BCONV_SLOTS)
    if act:
        x[1, :, 1, 1] = -act_bias  # x + act_bias = 0 exactly
        tensors["a"], slots["act_bias"] = act_bias, "a"
    want = bconv_reference(x, sign_w, scale, bias, act_bias, stride, pad, dil)
    # integer dot products, then the same two float roundings: equal, not just close
    check([Node("bconv2d", [0], slots, conv_attrs(stride, pad, dil))], tensors, x, want, 0)


@pytest.mark.parametrize("act", [False, True])
def test_binary_linear_is_a_1x1_bconv_on_a_vector(act):
    x = rand(4, 100, 1, 1)
    sign_w, bits, scale, bias = bconv_tensors(100, 10, 1, 1)
    tensors, slots = {"w": bits, "s": scale, "b": bias}, dict(BCONV_SLOTS)
    shifted = x[:, :, 0, 0]
    if act:  # RSign before a binary linear: sign(x + act_bias)
        tensors["a"], slots["act_bias"] = rand(100, seed=3), "a"
        shifted = shifted + tensors["a"]
    signs = torch.from_numpy(np.where(shifted >= 0, 1.0, -1.0).astype(np.float32))
    dot = signs @ torch.from_numpy(sign_w[:, :, 0, 0]).T
    want = dot * torch.from_numpy(scale) + torch.from_numpy(bias)
    check([Node("bconv2d", [0], slots, conv_attrs())], tensors, x, want, 0)


def test_nan_and_signed_zero_binarize_as_the_reference_on_every_kernel():
    """sign(x) as graph_ref and the float model compute it, torch.where(x >= 0, 1, -1): -0.0
    and +0.0 are +1, NaN and a negative denormal are -1; a shift to exactly zero is +1."""
    specials = [float("nan"), -0.0, 0.0, -1e-40, 1e-40, -1e-30, 1e-30]
    x = np.array(specials * 19, np.float32)[:130].reshape(1, 130, 1, 1)
    x = np.concatenate([x, np.roll(x, 3, axis=1)])
    sign_w, bits, scale, bias = bconv_tensors(130, 9, 1, 1, seed=4)
    act_bias = np.zeros(130, np.float32)
    act_bias[::5] = -x[1, ::5, 0, 0]  # x + act_bias = +-0 or NaN there
    for act in (None, act_bias):
        tensors, slots = {"w": bits, "s": scale, "b": bias}, dict(BCONV_SLOTS)
        if act is not None:
            tensors["a"], slots["act_bias"] = act, "a"
        want = bconv_reference(x, sign_w, scale, bias, act, 1, 0, 1).reshape(2, -1).numpy()
        nodes = [Node("bconv2d", [0], slots, conv_attrs()), Node("flatten", [1])]
        data = graph.graph_bytes(nodes, tensors, InputRecord(130, 1, 1, 9), {})
        with Runtime.from_bytes(data) as rt:
            for kernel in available_kernels():
                rt.set_kernel(kernel)
                np.testing.assert_array_equal(rt(x), want, err_msg=kernel)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_after_flatten(bias):
    x, w, b = rand(3, 4, 3, 5), rand(7, 60, seed=1), rand(7, seed=2)
    slots = {"weight": "w", "bias": "b"} if bias else {"weight": "w"}
    t_bias = torch.from_numpy(b) if bias else None
    want = F.linear(torch.from_numpy(x).flatten(1), torch.from_numpy(w), t_bias)
    check([Node("flatten", [0]), Node("linear", [1], slots)], {"w": w, "b": b}, x, want)


@pytest.mark.parametrize("slots", [{"scale": "s", "bias": "b"}, {"scale": "s"}, {"bias": "b"}, {}])
def test_affine(slots):
    x, s, b = rand(2, 5, 4, 3), rand(5, seed=1), rand(5, seed=2)
    want = torch.from_numpy(x)
    if "scale" in slots:
        want = want * torch.from_numpy(s)[:, None, None]
    if "bias" in slots:
        want = want + torch.from_numpy(b)[:, None, None]
    check([Node("affine", [0], slots)], {"s": s, "b": b}, x, want, 1e-6)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_add_and_mul_of_two_values(op):
    x, s, b = rand(2, 3, 4, 5), rand(3, seed=1), rand(3, seed=2)
    t = torch.from_numpy(x)
    other = t * torch.from_numpy(s)[:, None, None] + torch.from_numpy(b)[:, None, None]
    nodes = [Node("affine", [0], {"scale": "s", "bias": "b"}), Node(op, [0, 1])]
    check(nodes, {"s": s, "b": b}, x, t + other if op == "add" else t * other, 1e-6)


def test_mul_broadcasts_an_n_c_1_1_value():
    x = rand(2, 3, 4, 5)
    t = torch.from_numpy(x)
    nodes = [Node("global_avgpool", [0]), Node("mul", [0, 1])]
    check(nodes, {}, x, t * t.mean((2, 3), keepdim=True))


def leaky_clip(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-1, 1) + 0.1 * (t - t.clamp(-1, 1))


@pytest.mark.parametrize(
    ("op", "fattr", "torch_fn"),
    [
        ("relu", {}, torch.relu),
        ("sigmoid", {}, torch.sigmoid),
        ("hardtanh", {"min_val": -0.5, "max_val": 0.75}, lambda t: F.hardtanh(t, -0.5, 0.75)),
        ("leaky_clip", {}, leaky_clip),
    ],
)
def test_elementwise(op, fattr, torch_fn):
    x = rand(2, 3, 4, 5) * 2
    check([Node(op, [0], fattr=fattr)], {}, x, torch_fn(torch.from_numpy(x)), 1e-6)


@pytest.mark.parametrize("n_slopes", [1, 4])
def test_prelu(n_slopes):
    x, slope = rand(2, 4, 3, 3), rand(n_slopes, seed=1)
    want = F.prelu(torch.from_numpy(x), torch.from_numpy(slope))
    check([Node("prelu", [0], {"slope": "a"})], {"a": slope}, x, want, 1e-6)


POOL_ATTRS = ("kh", "kw", "stride_h", "stride_w", "pad_h", "pad_w", "ceil_mode")
POOLS = [  # POOL_ATTRS
    (2, 2, 2, 2, 0, 0, 0),
    (3, 3, 2, 2, 1, 1, 0),
    (3, 3, 2, 2, 1, 1, 1),
    (3, 2, 2, 3, 0, 1, 1),
    (2, 2, 2, 2, 1, 1, 1),
    (3, 3, 1, 1, 1, 1, 0),
]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("side", [6, 7])
def test_maxpool2d(pool, side):
    kh, kw, sh, sw, ph, pw, ceil = pool
    x = rand(2, 3, side, side + 1)
    want = F.max_pool2d(torch.from_numpy(x), (kh, kw), (sh, sw), (ph, pw), ceil_mode=bool(ceil))
    check([Node("maxpool2d", [0], iattr=dict(zip(POOL_ATTRS, pool, strict=True)))], {}, x, want, 0)


@pytest.mark.parametrize(
    "pool", [(3, 3, 2, 2, 1, 1, 0), (3, 3, 1, 1, 1, 1, 0), (2, 3, 2, 1, 0, 1, 1)]
)
def test_maxpool2d_rows_of_several_chunks_and_special_values_bit_for_bit(pool):
    """Rows of 1 to 5 chunks of 16 outputs (the AVX-512 pass runs them in pairs, an odd one
    alone; the 3x3 stride-2 pool of a plane without NaN runs rows first, carrying a tap across
    chunks), planes of 1 to 8 rows; a plane with NaN (the last NaN in a window wins, as
    PyTorch's kernel) and planes without (-0.0 beside +0.0: the first of equal values wins);
    compared as bits."""
    x = rand(1, 4, 8, 75)
    x[0, :, ::2, ::3] = 0.0
    x[0, :, 1::2, 1::3] = -0.0
    nan_bits = (0x7FC00000 | np.arange(1, 18, dtype=np.uint32)).view(np.float32)
    x[0, 1, 2, 5:70:4] = nan_bits  # NaNs with distinct payloads
    x[0, 2, 4, 10] = -np.inf
    # channel 3: only -0.0, +0.0 and -1 (windows whose max is a zero of either sign, in any order)
    x[0, 3] = np.random.default_rng(3).choice(np.float32([0.0, -0.0, -1.0]), x.shape[2:])
    kh, kw, sh, sw, ph, pw, ceil = pool
    sizes = [(8, 75), (7, 75), (7, 40), (8, 33), (7, 32), (2, 31), (1, 13), (3, 2)]
    for (height, width), kernel in itertools.product(sizes, available_kernels()):
        xi = np.ascontiguousarray(x[..., :height, :width])
        want = F.max_pool2d(
            torch.from_numpy(xi), (kh, kw), (sh, sw), (ph, pw), ceil_mode=bool(ceil)
        )
        node = Node("maxpool2d", [0], iattr=dict(zip(POOL_ATTRS, pool, strict=True)))
        got = run_graph([node], {}, xi, want[0].numel(), kernel)
        np.testing.assert_array_equal(
            got.view(np.uint32),
            want.reshape(1, -1).numpy().view(np.uint32),
            err_msg=f"{height} x {width}, {kernel}",
        )


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("side", [6, 7])
def test_avgpool2d(pool, count_include_pad, side):
    kh, kw, sh, sw, ph, pw, ceil = pool
    x = rand(2, 3, side, side + 1)
    want = F.avg_pool2d(
        torch.from_numpy(x),
        (kh, kw),
        (sh, sw),
        (ph, pw),
        ceil_mode=bool(ceil),
        count_include_pad=bool(count_include_pad),
    )
    attrs = dict(zip(POOL_ATTRS, pool, strict=True)) | {"count_include_pad": count_include_pad}
    check([Node("avgpool2d", [0], iattr=attrs)], {}, x, want, 1e-6)


@settings(max_examples=80, deadline=None)
@given(
    op=st.sampled_from(["maxpool2d", "avgpool2d", "conv2d"]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    pad=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    flag=st.booleans(),  # ceil_mode / count_include_pad / dilation 2
)
def test_windows_agree_with_pytorch_or_both_refuse(op, h, w, k, stride, pad, flag):
    """Any window on any small input: the runtime computes what PyTorch computes, and refuses
    what PyTorch refuses (a window that does not fit, padding over half the window)."""
    x = rand(2, 3, h, w)
    t = torch.from_numpy(x)
    if op == "conv2d":
        weight = rand(4, 3, *k, seed=1)
        dil = (2, 1) if flag else (1, 1)
        node = Node("conv2d", [0], {"weight": "w"}, conv_attrs(stride, pad, dil) | {"groups": 1})
        call = lambda: F.conv2d(t, torch.from_numpy(weight), None, stride, pad, dil)  # noqa: E731
    else:
        attrs = dict(zip(POOL_ATTRS, (*k, *stride, *pad, int(flag)), strict=True))
        if op == "avgpool2d":
            attrs["count_include_pad"] = int(not flag)
            call = lambda: F.avg_pool2d(t, k, stride, pad, flag, not flag)  # noqa: E731
        else:
            call = lambda: F.max_pool2d(t, k, stride, pad, ceil_mode=flag)  # noqa: E731
        node, weight = Node(op, [0], iattr=attrs), None
    try:
        want = call()
    except RuntimeError:
        with pytest.raises(ExportError, match=r"does not fit|pad_"):
            run_graph([node], {"w": weight} if weight is not None else {}, x, 1)
        return
    check([node], {"w": weight} if weight is not None else {}, x, want, 1e-5)


def test_global_avgpool_and_flatten():
    x = rand(3, 5, 4, 6)
    check([Node("global_avgpool", [0])], {}, x, torch.from_numpy(x).mean((2, 3)), 1e-6)
    check([], {}, x, torch.from_numpy(x), 0)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_concat(count):
    x = rand(2, 3, 4, 5)
    t = torch.from_numpy(x)
    ops = [("relu", torch.relu), ("sigmoid", torch.sigmoid), ("leaky_clip", leaky_clip)][
        : count - 1
    ]
    nodes = [*(Node(op, [0]) for op, _ in ops), Node("concat", list(range(count)))]
    check(nodes, {}, x, torch.cat([t, *(fn(t) for _, fn in ops)], 1), 1e-6)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_channel_shuffle(groups):
    x = rand(2, 6, 3, 2)
    want = torch.from_numpy(x).view(2, groups, 6 // groups, 3, 2).transpose(1, 2)
    check([Node("channel_shuffle", [0], iattr={"groups": groups})], {}, x, want, 0)


@pytest.mark.parametrize(
    ("sh", "sw", "before", "after"),
    [
        (2, 2, 2, 2),
        (1, 3, 0, 3),
        (2, 1, 1, 0),
        (1, 1, -1, 0),
        (1, 1, 0, -2),
        (2, 2, -1, -1),
        (1, 1, 2, -2),
    ],
)
def test_subsample_pad(sh, sw, before, after):
    """Zero channels added, or (negative pads) channels removed: a channel slice, as F.pad."""
    x = rand(2, 3, 7, 6)
    attrs = {"stride_h": sh, "stride_w": sw, "pad_before": before, "pad_after": after}
    want = F.pad(torch.from_numpy(x)[:, :, ::sh, ::sw], (0, 0, 0, 0, before, after))
    check([Node("subsample_pad", [0], iattr=attrs)], {}, x, want, 0)


def test_subsample_pad_that_removes_every_channel_is_refused():
    attrs = {"stride_h": 1, "stride_w": 1, "pad_before": -2, "pad_after": -1}
    nodes = [Node("subsample_pad", [0], iattr=attrs), Node("global_avgpool", [1])]
    data = graph.graph_bytes(nodes, {}, InputRecord(3, 4, 4, 1), {})
    with pytest.raises(ExportError, match=r"pads -2 and -1 remove all 3 channels of its input"):
        Runtime.from_bytes(data)


def test_rescale_hw():
    x, scale = rand(2, 3, 4, 5), rand(1, 3, 4, 5, seed=1)
    want = torch.from_numpy(x) * torch.from_numpy(scale)
    check([Node("rescale_hw", [0], {"scale": "s"})], {"s": scale}, x, want, 0)


# ---------------------------------------------------------------------------------- chains


def residual_net(channels: int = 16, classes: int = 10):
    """A small binary ResNet-like graph and its PyTorch forward: float stem, two binary
    residual blocks (one downsampling through subsample_pad), concat, shuffle, pools, a
    linear head. Values are reused across the skip connections, so the arena plan matters."""
    c = channels
    t = {
        "stem_w": rand(c, 3, 3, 3, seed=1) * 0.3,
        "stem_s": rand(c, seed=2),
        "stem_b": rand(c, seed=3),
        "prelu": np.abs(rand(c, seed=4)) * 0.2,
        "head_w": rand(classes, 2 * c, seed=5) * 0.2,
        "head_b": rand(classes, seed=6),
    }
    signs = {}
    for i, cin in enumerate((c, c)):
        sign_w, bits, scale, bias = bconv_tensors(cin, c, 3, 3, seed=10 + i)
        signs[i] = sign_w
        t |= {
            f"b{i}_w": bits,
            f"b{i}_s": np.abs(scale) * 0.1,
            f"b{i}_b": bias,
            f"b{i}_a": rand(cin, seed=20 + i) * 0.1,
        }
    conv = conv_attrs(pad=1)
    avgpool = dict(zip(POOL_ATTRS, (2, 2, 2, 2, 0, 0, 1), strict=True)) | {"count_include_pad": 0}

    def bslots(i: int) -> dict[str, str]:
        return {"weight_bits": f"b{i}_w", "out_scale": f"b{i}_s", "out_bias": f"b{i}_b"} | {
            "act_bias": f"b{i}_a"
        }

    nodes = [
        Node("conv2d", [0], {"weight": "stem_w"}, conv | {"groups": 1}),  # 1
        Node("affine", [1], {"scale": "stem_s", "bias": "stem_b"}),  # 2
        Node("bconv2d", [2], bslots(0), conv),  # 3
        Node("add", [3, 2]),  # 4
        Node("prelu", [4], {"slope": "prelu"}),  # 5
        Node("bconv2d", [5], bslots(1), conv | {"stride_h": 2, "stride_w": 2}),  # 6
        Node("avgpool2d", [5], iattr=avgpool),  # 7
        Node("add", [6, 7]),  # 8
        Node("hardtanh", [8], fattr={"min_val": -1.0, "max_val": 1.0}),  # 9
        Node("maxpool2d", [5], iattr=dict(zip(POOL_ATTRS, (3, 3, 2, 2, 1, 1, 0), strict=True))),
        Node("concat", [9, 10]),  # 11
        Node("channel_shuffle", [11], iattr={"groups": 2}),  # 12
        Node("global_avgpool", [12]),  # 13
        Node("flatten", [13]),  # 14
        Node("linear", [14], {"weight": "head_w", "bias": "head_b"}),  # 15
    ]

    def forward(x: np.ndarray) -> torch.Tensor:
        g = {k: torch.from_numpy(v) for k, v in t.items() if v.dtype == np.float32}
        v = F.conv2d(torch.from_numpy(x), g["stem_w"], padding=1)
        v2 = v * g["stem_s"][:, None, None] + g["stem_b"][:, None, None]
        v3 = bconv_reference(v2.numpy(), signs[0], t["b0_s"], t["b0_b"], t["b0_a"], 1, 1, 1)
        v5 = F.prelu(v3 + v2, g["prelu"])
        v6 = bconv_reference(v5.numpy(), signs[1], t["b1_s"], t["b1_b"], t["b1_a"], 2, 1, 1)
        v7 = F.avg_pool2d(v5, 2, 2, ceil_mode=True, count_include_pad=False)
        v9 = F.hardtanh(v6 + v7)
        v10 = F.max_pool2d(v5, 3, 2, 1)
        v11 = torch.cat([v9, v10], 1)
        v12 = v11.view(-1, 2, c, *v11.shape[2:]).transpose(1, 2).reshape(v11.shape)
        return F.linear(v12.mean((2, 3)), g["head_w"], g["head_b"])

    return nodes, t, forward


def test_residual_chain_equals_pytorch_for_every_batch_and_kernel():
    nodes, tensors, forward = residual_net()
    data = graph.graph_bytes(nodes, tensors, InputRecord(3, 9, 9, 10), {"name": "chain"})
    x = rand(5, 3, 9, 9, seed=7)
    want = forward(x).numpy()
    with Runtime.from_bytes(data) as rt:
        # batch 1 (the arena of the load), then a larger batch grows it, then a smaller reuses it
        for n in (1, 5, 2):
            np.testing.assert_allclose(rt(x[:n]), want[:n], rtol=1e-4, atol=1e-4)
        first = rt(x)
        for kernel in ("portable", "auto"):
            rt.set_kernel(kernel)
            np.testing.assert_array_equal(rt(x), first)
        rt.set_threads(THREADS)
        np.testing.assert_array_equal(rt(x), first)


def test_a_batch_of_several_chunks_equals_pytorch():
    """Three live values of 16 x 48 x 48 floats (432 KiB an image): a batch of 7 runs as chunks
    of 4 and 3 images (run.c: CHUNK_BYTES), each chunk's values at its own offsets."""
    x, w, b = rand(7, 3, 48, 48), rand(16, 3, 3, 3, seed=1), rand(16, seed=2)
    t = torch.from_numpy(x)
    nodes = [
        Node("conv2d", [0], {"weight": "w", "bias": "b"}, conv_attrs(1, 1) | {"groups": 1}),
        Node("relu", [1]),
        Node("add", [1, 2]),
        Node("global_avgpool", [3]),
    ]
    v = F.conv2d(t, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    check(nodes, {"w": w, "b": b}, x, (v + v.relu()).mean((2, 3)), 1e-4)


def test_any_memory_layout_of_the_input(tmp_path):
    """A batch that is a view (NHWC data transposed to NCHW, a strided slice, a torch
    channels_last tensor through deploy.load) gives the contiguous batch's output."""
    from onebit.deploy import load

    path, rt = cli_model(tmp_path, InputRecord(3, 12, 12, 5))
    nhwc = rand(4, 12, 12, 3, seed=9)
    x = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    want = rt(x)
    np.testing.assert_array_equal(rt(nhwc.transpose(0, 3, 1, 2)), want)
    strided = np.concatenate([nhwc, nhwc], axis=2).transpose(0, 3, 1, 2)[..., 1::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(rt(strided), rt(np.ascontiguousarray(strided)))
    deployed = load(path)
    t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    assert not t.is_contiguous()
    np.testing.assert_array_equal(deployed(t).numpy(), want)
    rt.close()
    deployed.close()


def test_input_record_and_errors_of_the_binding(tmp_path):
    record = InputRecord(1, 32, 32, 10, "pad", 28, 28, (0.2860,), (0.3530,))
    _, rt = cli_model(tmp_path, record)
    with rt:
        assert rt.input_shape == (1, 32, 32) and rt.num_outputs == 10
        got = rt.input_record
        assert (got.transform, got.raw_height, got.raw_width) == ("pad", 28, 28)
        np.testing.assert_allclose(got.mean + got.std, (0.2860, 0.3530), rtol=1e-6)
        with pytest.raises(ExportError, match="no-such-kernel"):
            rt.set_kernel("no-such-kernel")
        with pytest.raises(ExportError, match="threads 0"):
            rt.set_threads(0)
        if THREADS == 1:
            with pytest.raises(ExportError, match="no OpenMP"):
                rt.set_threads(2)
        with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
            rt(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ExportError, match="closed"):
        rt(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ExportError, match=r"missing\.onebit"):
        Runtime.load(tmp_path / "missing.onebit")


# ------------------------------------------------------------------------------------- CLI


def cli_model(
    tmp_path: Path, record: InputRecord, name: str = "model.onebit"
) -> tuple[Path, Runtime]:
    """residual_net with a stride-2 stem for ``record``'s channels, written to a file."""
    nodes, tensors, _ = residual_net(classes=record.num_classes)
    nodes[0] = Node("conv2d", [0], {"weight": "w1"}, conv_attrs(2, 1) | {"groups": 1})
    tensors["w1"] = rand(16, record.channels, 3, 3) * 0.5
    path = tmp_path / name
    graph.write_graph(path, nodes, tensors, record, {})
    return path, Runtime.load(path)


def onebit_run(build: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(build / "onebit-run"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1"},
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def expected_classes(rt: Runtime, spec: InputSpec, images: np.ndarray, k: int = 1) -> np.ndarray:
    """The top-k classes of the runtime on InputSpec.preprocess's input (torch.topk's order)."""
    logits = torch.from_numpy(rt(spec.preprocess(images)))
    return logits.topk(k, 1).indices.numpy()


def test_cli_on_idx_and_npy_files_equals_preprocess_then_runtime(build, tmp_path):
    record = InputRecord(1, 32, 32, 10, "pad", 28, 28, (0.2860,), (0.3530,))
    spec = InputSpec(1, 32, (0.2860,), (0.3530,), "pad", 28)
    model, rt = cli_model(tmp_path, record)
    images = np.random.default_rng(0).integers(0, 256, (37, 28, 28), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 10, 37).astype(np.uint8)
    want = expected_classes(rt, spec, images)[:, 0]
    write_idx(tmp_path / "images.idx", images)
    write_idx(tmp_path / "labels.idx", labels)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "float.npy", images[:, None].astype(np.float32) / 255)  # (N, C, H, W)
    np.save(tmp_path / "labels.npy", labels.astype(np.int64))
    (tmp_path / "images.raw").write_bytes(images.tobytes())
    for source, extra in (
        ("images.idx", ["--batch", "8"]),
        ("images.npy", []),
        ("float.npy", ["--batch", "5", "--threads", str(THREADS)]),
        ("images.raw", ["--raw", "37", "--kernel", "portable"]),
    ):
        done = onebit_run(build, model, tmp_path / source, *extra)
        assert done.returncode == 0, done.stderr
        assert [int(line) for line in done.stdout.split()] == want.tolist(), source

    hits = int((want == labels).sum())
    for labels_file in ("labels.idx", "labels.npy"):
        done = onebit_run(build, model, tmp_path / "images.idx", "--labels", tmp_path / labels_file)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"top-1 {100 * hits / 37:.2f}% ({hits}/37)\n"

    top3 = expected_classes(rt, spec, images, 3)
    done = onebit_run(build, model, tmp_path / "images.idx", "--top", "3")
    assert [list(map(int, line.split())) for line in done.stdout.splitlines()] == top3.tolist()

    done = onebit_run(build, model, tmp_path / "images.idx", "--bench", "3", "--batch", "16")
    assert done.returncode == 0, done.stderr
    assert "batch 16:" in done.stdout and "ms per image" in done.stdout


def test_cli_on_nhwc_npy_of_a_three_channel_model(build, tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model, rt = cli_model(tmp_path, InputRecord(3, 12, 12, 7, "none", 0, 0, mean, std))
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    done = onebit_run(build, model, tmp_path / "images.npy")
    assert done.returncode == 0, done.stderr
    want = expected_classes(rt, InputSpec(3, 12, mean, std), images)[:, 0]
    assert [int(line) for line in done.stdout.split()] == want.tolist()


@pytest.mark.parametrize("transform", ["resize_crop", "none"])
def test_cli_resizes_as_preprocess_does(build, tmp_path, transform):
    """Images of other sizes (and, for resize_crop, of the model's own: 32 -> 37 -> crop 32)
    are resized by onebit-run as InputSpec.preprocess resizes them (PyTorch's antialiased
    bilinear, the same float32 operations in the same order): the same ranking of all 10
    classes, shrinking and growing, uint8 NHWC and float NCHW."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    record = InputRecord(3, 32, 32, 10, transform, 0, 0, mean, std)
    model, rt = cli_model(tmp_path, record)
    spec = InputSpec(3, 32, mean, std, transform)
    rng = np.random.default_rng(0)
    for h, w in ((75, 50), (20, 27), (32, 32)):
        images = rng.integers(0, 256, (7, h, w, 3), dtype=np.uint8)
        np.save(tmp_path / "nhwc.npy", images)
        np.save(tmp_path / "nchw.npy", images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        want = expected_classes(rt, spec, images, 10).tolist()
        for source in ("nhwc.npy", "nchw.npy"):
            done = onebit_run(build, model, tmp_path / source, "--top", "10", "--batch", "3")
            assert done.returncode == 0, done.stderr
            got = [list(map(int, line.split())) for line in done.stdout.splitlines()]
            assert got == want, (h, w, source)


def test_cli_errors_are_one_line_and_exit_2(build, tmp_path):
    model, _ = cli_model(tmp_path, InputRecord(1, 32, 32, 10, "pad", 28, 28, (0.5,), (0.5,)))
    images = np.zeros((2, 28, 28), np.uint8)
    write_idx(tmp_path / "images.idx", images)
    (tmp_path / "images.idx.gz").write_bytes(gzip.compress((tmp_path / "images.idx").read_bytes()))
    np.save(tmp_path / "big.npy", np.zeros((2, 33, 33), np.uint8))
    (tmp_path / "junk.onebit").write_bytes(b"not a model at all")
    np.save(tmp_path / "f64.npy", np.zeros((2, 28, 28)))
    cases = [
        ((tmp_path, tmp_path / "images.idx"), f"{tmp_path}: cannot read it (Is a directory)"),
        ((model, tmp_path), f"{tmp_path}: cannot read it (Is a directory)"),
        ((model, tmp_path / "f64.npy"), "f64.npy: dtype '<f8'; images must be uint8 or float32"),
        ((model, tmp_path / "images.idx.gz"), "gzip-compressed: decompress it first"),
        ((model, tmp_path / "big.npy"), "larger than the model's 32x32"),
        (
            (tmp_path / "junk.onebit", tmp_path / "images.idx"),
            "junk.onebit: the file has 18 bytes, fewer than the 152-byte header",
        ),
        ((model, tmp_path / "missing.idx"), "No such file"),
        ((model, tmp_path / "images.idx", "--labels", tmp_path / "images.idx"), "labels must be"),
        ((model, tmp_path / "images.idx", "--raw", "3"), "raw images"),
        ((model, tmp_path / "images.idx", "--kernel", "nope"), "--kernel nope"),
        ((model, tmp_path / "images.idx", "--batch", "0"), "--batch needs an integer"),
        ((model, tmp_path / "images.idx", "--frobnicate"), "unknown option --frobnicate"),
        ((model,), "a model and an images file are needed"),
    ]
    for args, message in cases:
        done = onebit_run(build, *args)
        assert done.returncode == 2, (args, done.stderr)
        (line,) = done.stderr.splitlines()
        assert line.startswith("onebit-run: error: ") and message in line, (args, line)
        assert line.count(str(args[0])) <= 1, line  # the file named once


def test_cli_cross_built_for_aarch64_agrees_under_qemu(build, tmp_path):
    require_arm_tools()
    cross, qemu = ARM_TOOLS
    arm = tmp_path / "aarch64"
    done = _make(f"CC={cross}", f"BUILD={arm}", f"{arm}/onebit-run")
    assert done.returncode == 0, done.stderr
    model, _ = cli_model(tmp_path, InputRecord(1, 32, 32, 10, "pad", 28, 28, (0.5,), (0.5,)))
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "images.idx", images)
    want = onebit_run(build, model, tmp_path / "images.idx", "--top", "2").stdout
    for kernel in ("neon", "portable"):
        args = [model, tmp_path / "images.idx", "--top", "2", "--kernel", kernel]
        done = subprocess.run(
            [qemu, "-L", "/usr/aarch64-linux-gnu", str(arm / "onebit-run"), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == want, kernel


# ----------------------------------------------------------------------------- hostile files


def small_graph() -> bytes:
    """A graph with every kind of table entry the edits below touch: a float conv, a bconv
    with act_bias, pools, a concat and a linear head."""
    nodes, tensors, _ = residual_net(channels=8, classes=4)
    return graph.graph_bytes(nodes, tensors, InputRecord(3, 8, 8, 4), {"name": "small"})


def rechecksum(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 24, zlib.crc32(data[CRC_FROM:]))
    return bytes(data)


def edit(data: bytes, offset: int, fmt: str, value) -> bytes:
    """``data`` with one field set and the crc32 recomputed: only the field's check can catch it."""
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, value)
    return rechecksum(out)


# graph.py's HEADER, TENSOR and NODE fields in order with their struct codes; the asserts below
# check that they spell graph.py's formats, so the offsets the edits use are the file's
HEADER_FIELDS = [
    *[("magic", "8s"), ("version", "I"), ("header_size", "I"), ("file_size", "Q")],
    *[("crc32", "I"), ("reserved", "I"), ("n_tensors", "I"), ("n_nodes", "I")],
    *[("tensor_offset", "Q"), ("node_offset", "Q"), ("meta_offset", "Q"), ("meta_size", "Q")],
    *[("data_offset", "Q"), ("data_size", "Q"), ("in_c", "I"), ("in_h", "I"), ("in_w", "I")],
    *[("transform", "I"), ("raw_h", "I"), ("raw_w", "I"), ("num_classes", "I")],
    *[("reserved2", "I"), ("mean", "4f"), ("std", "4f")],
]
TENSOR_FIELDS = [("dtype", "I"), ("ndim", "I"), ("dims", "4I"), ("offset", "Q"), ("nbytes", "Q")]
NODE_FIELDS = [("op", "I"), ("n_inputs", "I"), ("inputs", "4i"), ("tensors", "6i")]
NODE_FIELDS += [("iattr", "12i"), ("fattr", "4f"), ("reserved", "4I")]


def offsets(fields: list[tuple[str, str]], struct_: struct.Struct) -> dict[str, int]:
    assert "<" + "".join(code for _, code in fields) == struct_.format
    return {
        name: struct.calcsize("<" + "".join(c for _, c in fields[:i]))
        for i, (name, _) in enumerate(fields)
    }


H = offsets(HEADER_FIELDS, HEADER)
T = offsets(TENSOR_FIELDS, graph.TENSOR)
N = offsets(NODE_FIELDS, graph.NODE)


def header(data: bytes, name: str) -> int:
    code = dict(HEADER_FIELDS)[name]
    return struct.unpack_from("<" + code, data, H[name])[0]


def node_field(data: bytes, k: int, field: str, i: int = 0) -> int:
    """Offset of a field of node k (item i of an array field)."""
    return header(data, "node_offset") + k * NODE_SIZE + N[field] + 4 * i


def tensor_field(data: bytes, i: int, field: str, d: int = 0) -> int:
    """Offset of a field of tensor i (item d of dims)."""
    return header(data, "tensor_offset") + i * TENSOR_SIZE + T[field] + 4 * d


def refused(data: bytes, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        Runtime.from_bytes(data).close()


def test_small_graph_loads_and_runs():
    with Runtime.from_bytes(small_graph()) as rt:
        assert rt(rand(2, 3, 8, 8)).shape == (2, 4)


def test_truncated_files_are_refused():
    data = small_graph()
    for length in [*range(0, 200), *range(200, len(data), 97), len(data) - 1]:
        refused(data[:length], "header|file has")


def test_flipped_bits_are_refused():
    data = small_graph()
    rng = np.random.default_rng(0)
    for position in rng.integers(0, len(data) * 8, 300):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        refused(bytes(flipped), ".")  # crc32, or the header field (magic, sizes) it hit


def tensor_ids(data: bytes) -> dict[str, int]:
    import json

    at = header(data, "meta_offset")
    meta = json.loads(data[at : at + header(data, "meta_size")])
    return {name: i for i, name in enumerate(meta["tensors"])}


def test_edited_and_rechecksummed_files_are_refused():
    d = small_graph()
    h = {name: header(d, name) for name in ("n_tensors", "data_offset", "data_size")}
    ids = tensor_ids(d)
    stem, bits = ids["stem_w"], ids["b0_w"]
    cases = [
        # header
        (edit(d, H["version"], "I", 3), "version 3"),
        (edit(d, H["header_size"], "I", 160), "header_size"),
        (edit(d, H["n_nodes"], "I", 0), "nodes"),
        (edit(d, H["n_nodes"], "I", 2**31), "nodes"),
        (edit(d, H["n_tensors"], "I", h["n_tensors"] + 1), "tensor table|node table"),
        (edit(d, H["tensor_offset"], "Q", 2**63), "tensor table"),
        (edit(d, H["node_offset"], "Q", len(d)), "node table"),
        (edit(d, H["meta_size"], "Q", 2**64 - 1), "meta"),
        (edit(d, H["data_offset"], "Q", h["data_offset"] - 1), "data section"),
        (edit(d, H["data_size"], "Q", h["data_size"] + 64), "data section"),
        (edit(d, H["in_h"], "I", 2**30), "input"),
        (edit(d, H["in_c"], "I", 0), "input"),
        (edit(d, H["in_c"], "I", 4), "weight has 3 input channels, its input has 4"),
        (edit(d, H["in_h"], "I", 2**20), "limit"),
        (edit(d, H["transform"], "I", 9), "transform"),
        (edit(d, H["transform"], "I", 1), "raw size"),
        (edit(d, H["num_classes"], "I", 5), "the header says"),
        (edit(d, H["std"], "f", 0.0), "std"),
        (edit(d, H["std"], "f", float("nan")), "std"),
        # tensors
        (edit(d, tensor_field(d, stem, "dims", 0), "I", 2**31), "dim 0"),
        (edit(d, tensor_field(d, stem, "dims", 3), "I", 0), "dim 3"),
        (edit(d, tensor_field(d, stem, "ndim", 0), "I", 5), "dims"),
        (edit(d, tensor_field(d, stem, "dtype"), "I", 7), "dtype 7"),
        (edit(d, tensor_field(d, stem, "dtype"), "I", 3), "nbytes|i32"),
        (edit(d, tensor_field(d, stem, "nbytes"), "Q", 2**62), "nbytes"),
        (edit(d, tensor_field(d, stem, "offset"), "Q", h["data_size"]), "data section"),
        (edit(d, tensor_field(d, stem, "offset"), "Q", 2**64 - 64), "data section"),
        (edit(d, tensor_field(d, stem, "offset"), "Q", 4), "aligned"),
        (edit(d, tensor_field(d, bits, "dims", 3), "I", 2), "words per tap|nbytes"),
        # nodes
        (edit(d, node_field(d, 0, "op"), "I", 0), "op code 0"),
        (edit(d, node_field(d, 3, "op"), "I", 20), "op code 20"),
        (edit(d, node_field(d, 3, "op"), "I", 2**31), "op code"),
        (edit(d, node_field(d, 3, "op"), "I", 2), "2 inputs, it takes 1 to 1"),
        (edit(d, node_field(d, 1, "op"), "I", 2), r"\(bconv2d\): its tensor out_bias is missing"),
        (edit(d, node_field(d, 3, "n_inputs"), "I", 5), "5 inputs"),
        (edit(d, node_field(d, 3, "n_inputs"), "I", 0), "0 inputs"),
        (edit(d, node_field(d, 3, "inputs", 1), "i", -1), "value -1"),
        (edit(d, node_field(d, 3, "inputs", 1), "i", 4), "value 4"),  # itself: a cycle
        (edit(d, node_field(d, 3, "inputs", 1), "i", 2**31 - 1), "reads only values 0 to 3"),
        (edit(d, node_field(d, 3, "inputs", 2), "i", 0), "unused input"),
        (edit(d, node_field(d, 0, "tensors", 0), "i", h["n_tensors"]), "the file has"),
        (edit(d, node_field(d, 0, "tensors", 0), "i", -2), "tensor -2"),
        (edit(d, node_field(d, 0, "tensors", 0), "i", -1), "missing"),
        (edit(d, node_field(d, 0, "tensors", 0), "i", bits), "weight is u64"),
        (edit(d, node_field(d, 0, "tensors", 1), "i", ids["head_w"]), r"bias is f32 \(4, 16\)"),
        (edit(d, node_field(d, 0, "tensors", 2), "i", 0), "tensor slot 2"),
        (edit(d, node_field(d, 2, "tensors", 1), "i", ids["head_b"]), "out_scale is f32 \\(4\\)"),
        (edit(d, node_field(d, 0, "iattr", 0), "i", 0), "stride_h is 0"),
        (edit(d, node_field(d, 0, "iattr", 1), "i", -1), "stride_w is -1"),
        (edit(d, node_field(d, 0, "iattr", 2), "i", -1), "pad_h is -1"),
        (edit(d, node_field(d, 0, "iattr", 4), "i", 0), "dil_h is 0"),
        (edit(d, node_field(d, 0, "iattr", 6), "i", 0), "groups is 0"),
        (edit(d, node_field(d, 0, "iattr", 6), "i", 2), "groups 2 does not divide"),
        (edit(d, node_field(d, 0, "iattr", 2), "i", 2**20), "pad_h"),
        (edit(d, node_field(d, 0, "iattr", 4), "i", 9), "does not fit"),
        (edit(d, node_field(d, 6, "iattr", 0), "i", 0), "kh is 0"),
        (edit(d, node_field(d, 6, "iattr", 4), "i", 2), "pad_h is 2"),
        (edit(d, node_field(d, 6, "iattr", 6), "i", 2), "ceil_mode"),
        (edit(d, node_field(d, 6, "iattr", 7), "i", -1), "count_include_pad"),
        (edit(d, node_field(d, 8, "fattr", 0), "f", float("nan")), "min_val"),
        (edit(d, node_field(d, 8, "fattr", 0), "f", 5.0), "min_val"),
        (edit(d, node_field(d, 11, "iattr", 0), "i", 3), "groups 3"),
        (edit(d, node_field(d, 3, "inputs", 1), "i", 6), "value 6|one shape"),
    ]
    wrong = []
    for i, (data, message) in enumerate(cases):
        try:
            Runtime.from_bytes(data).close()
            wrong.append(f"case {i} ({message}): loaded")
        except ExportError as err:
            if not re.search(message, str(err)):
                wrong.append(f"case {i} ({message}): {err}")
    assert not wrong, "\n".join(wrong)


def test_bconv_padding_bits_must_be_zero():
    d = small_graph()
    offset = (
        header(d, "data_offset")
        + struct.unpack_from("<Q", d, tensor_field(d, tensor_ids(d)["b0_w"], "offset"))[0]
    )
    refused(edit(d, offset + 7, "B", 0x80), "bits set past its 8 input channels")


def _asan_works(tmp: Path) -> bool:
    source = tmp / "probe.c"
    source.write_text("int main(void) { return 0; }\n")
    done = subprocess.run(
        ["cc", "-fsanitize=address,undefined", str(source), "-o", str(tmp / "probe")],
        capture_output=True,
    )
    return done.returncode == 0 and subprocess.run([str(tmp / "probe")]).returncode == 0


def mutations(data: bytes, count: int, seed: int = 0) -> list[bytes]:
    """Files made from ``data``: truncations, random bytes and random 32-bit values written into
    the header, tables and data, re-checksummed so they reach the loader's checks."""
    rng = np.random.default_rng(seed)
    tables = header(data, "meta_offset")
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out.append(data[: int(rng.integers(0, len(data)))])
            continue
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(CRC_FROM, tables if kind < 3 else len(data) - 4)) & ~3
            if kind == 1:
                value = int(
                    rng.choice([0, 1, 2, 3, 7, 8, 64, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1])
                )
            else:
                value = int(rng.integers(0, 2**32))
            struct.pack_into("<I", buf, at, value)
        out.append(rechecksum(buf))
    return out


def test_fuzzed_files_under_address_sanitizer(tmp_path):
    if not _asan_works(tmp_path):
        missing_toolchain("this C compiler cannot build and run with -fsanitize=address,undefined")
    asan = tmp_path / "asan"
    done = _make("asan", f"ASAN_BUILD={asan}")
    assert done.returncode == 0, done.stderr
    seeds = [
        small_graph(),
        graph.graph_bytes(*residual_net(channels=70, classes=3)[:2], InputRecord(3, 5, 5, 3), {}),
    ]
    files = []
    for s, data in enumerate(seeds):
        for i, case in enumerate([data, *mutations(data, 150, seed=s)]):
            files.append(tmp_path / f"case{s}_{i}.onebit")
            files[-1].write_bytes(case)
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    done = subprocess.run(
        [str(asan / "fuzz_load"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Sanitizer" not in done.stderr and "runtime error" not in done.stderr
    status = dict(line.split(" ", 1)[::-1] for line in done.stdout.splitlines())
    assert len(status) == len(files)
    assert status[str(files[0])] == "ONEBIT_OK" and status[str(files[151])] == "ONEBIT_OK"
    truncated = [str(f) for f in files if int(f.stem.split("_")[1]) % 4 == 1]
    assert all(status[f] != "ONEBIT_OK" for f in truncated)
