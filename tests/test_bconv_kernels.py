"""The C runtime's binary conv (runtime/src/bconv.c): every kernel variant bit for bit.

runtime/tests/bconv_test.c checks each variant against a naive C reference (built here with
AddressSanitizer and UBSan, with OpenMP, and for aarch64 under qemu when a cross compiler is
installed); the last test checks the C against PyTorch's conv2d through ctypes, so the C
reference and the op semantics of graph.py agree.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import missing_toolchain, require_arm_tools
from onebit.deploy.packing import pack_bits, pack_weight, tail_mask, unpack_bits, unpack_weight

ROOT = Path(__file__).resolve().parent.parent
BCONV = ROOT / "runtime/src/bconv.c"
TEST = ROOT / "runtime/tests/bconv_test.c"
CC = shutil.which("cc") or shutil.which("gcc")
CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64")
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
VARIANTS = ["portable", "avx2", "avx512", "neon"]

needs_cc = pytest.mark.skipif(
    CC is None and not os.environ.get("CI"), reason="no C compiler (cc or gcc) on PATH"
)


def _build(compiler: str, out: Path, *flags: str, sources=(TEST, BCONV)) -> Path:
    subprocess.run(
        [compiler, *FLAGS, *flags, *map(str, sources), "-o", str(out), "-lm"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failure(s)" in proc.stdout
    return proc.stdout


def _openmp_works(tmp_path: Path) -> bool:
    probe = tmp_path / "omp.c"
    probe.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
    return subprocess.run([CC, "-fopenmp", str(probe), "-o", str(tmp_path / "omp")]).returncode == 0


# ------------------------------------------------------------------- the packed layout


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    length=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip(lead, length, seed):
    g = torch.Generator().manual_seed(seed)
    negative = torch.rand(*lead, length, generator=g) < 0.5
    words = pack_bits(negative)
    assert words.shape == (*lead, (length + 63) // 64) and words.dtype == torch.int64
    assert torch.equal(unpack_bits(words, length), negative)
    # the bits past the last element are 0, as the kernels and the file checks require
    assert not bool((words[..., -1] & tail_mask(length)).any())


def test_pack_bit_order():
    negative = torch.zeros(130, dtype=torch.bool)
    negative[[0, 63, 64, 129]] = True
    words = pack_bits(negative).tolist()
    assert words == [1 - 2**63, 1, 2]  # bit 63 is the sign bit of the int64 word
    assert tail_mask(130) == -(1 << 2) and tail_mask(128) == 0


@settings(max_examples=25, deadline=None)
@given(
    cout=st.integers(1, 9),
    cin=st.integers(1, 140),
    k=st.sampled_from([(1, 1), (3, 3), (1, 3)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_weight_layout(cout, cin, k, seed):
    """graph.py's bconv2d weight_bits: (cout, kh, kw, ceil(cin / 64)) words, bit c % 64 of
    word c / 64 of tap (ky, kx) set for a negative weight."""
    w = torch.randn(cout, cin, *k, generator=torch.Generator().manual_seed(seed))
    words = pack_weight(w < 0)
    assert words.shape == (cout, *k, (cin + 63) // 64)
    assert torch.equal(unpack_weight(words, cin), w < 0)
    ky, kx, c = k[0] - 1, k[1] - 1, cin - 1
    bit = (words[0, ky, kx, c // 64] >> (c % 64)) & 1
    assert bool(bit) == bool(w[0, c, ky, kx] < 0)
    # a binary linear's weight (cout, cin) is a 1x1 tap
    assert torch.equal(pack_weight(w[:, :, 0, 0] < 0), pack_weight(w[:, :, :1, :1] < 0))


# ------------------------------------------------------------------------- the C kernels


@needs_cc
def test_every_variant_matches_the_reference_under_sanitizers(tmp_path):
    exe = _build(CC, tmp_path / "bconv_test", "-O2", "-g", "-fsanitize=address,undefined")
    out = _run(str(exe), "300", "1")
    assert "portable" in out


@needs_cc
def test_every_variant_matches_the_reference_with_openmp_threads(tmp_path):
    if not _openmp_works(tmp_path):
        missing_toolchain("the C compiler has no OpenMP")
    exe = _build(CC, tmp_path / "bconv_test", "-O3", "-fopenmp")
    _run(str(exe), "200", "2")


@needs_cc
def test_builds_with_plain_optimization_and_no_warnings(tmp_path):
    """The ISA code is in function-level targets: a plain -O3 -Wpedantic build has no warning."""
    _build(CC, tmp_path / "bconv.o", "-O3", "-Wpedantic", "-c", sources=(BCONV,))


def test_aarch64_neon_matches_the_reference_under_qemu(tmp_path):
    require_arm_tools()
    exe = _build(CROSS_CC, tmp_path / "bconv_test_arm", "-O2", "-static")
    out = _run(QEMU, str(exe), "200", "2")
    assert "neon" in out


class _Geom(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int)
        for name in ("cin", "cout", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw")
    ]


@pytest.fixture(scope="module")
def bconv_lib(tmp_path_factory):
    if CC is None:
        missing_toolchain("no C compiler (cc or gcc) on PATH")
    lib = tmp_path_factory.mktemp("bconv") / "libbconv.so"
    _build(CC, lib, "-O2", "-shared", "-fPIC", sources=(BCONV,))
    dll = ctypes.CDLL(str(lib))
    dll.ob_kernel_variant.argtypes = [ctypes.c_char_p]
    dll.ob_bconv_prepare.restype = ctypes.c_void_p
    dll.ob_bconv_prepare.argtypes = [ctypes.POINTER(_Geom)] + [ctypes.c_void_p] * 4 + [ctypes.c_int]
    dll.ob_bconv_scratch_bytes.restype = ctypes.c_size_t
    dll.ob_bconv_scratch_bytes.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 3
    dll.ob_bconv_run.argtypes = (
        [ctypes.c_void_p, ctypes.c_void_p]
        + [ctypes.c_int] * 3
        + [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
    )
    dll.ob_bconv_free.argtypes = [ctypes.c_void_p]
    return dll


@pytest.mark.parametrize(
    "n, cin, cout, hw, k, stride, pad, dil, act_bias",
    [
        (1, 16, 16, (32, 32), (3, 3), 1, 1, 1, True),
        (2, 3, 5, (9, 11), (3, 5), 2, 2, 1, False),
        (1, 64, 24, (14, 14), (3, 3), 2, 1, 1, True),
        (1, 130, 9, (7, 10), (1, 3), 1, 0, 2, True),
        (2, 65, 8, (6, 6), (5, 5), 1, 2, 1, False),
    ],
)
def test_matches_pytorch_conv2d(bconv_lib, n, cin, cout, hw, k, stride, pad, dil, act_bias):
    """y = conv2d(sign(x + act_bias), sign(w)) * out_scale + out_bias, zero padding, bit for bit."""
    g = torch.Generator().manual_seed(cin * 1000 + cout)
    x = torch.randn(n, cin, *hw, generator=g)
    x[0, 0, 0, :2] = 0.0  # sign(0) = +1
    # as torch.where(x >= 0, 1, -1): -0.0 is +1, NaN and a negative denormal -1
    x[-1, -1, -1, :3] = torch.tensor([float("nan"), -0.0, -1e-40])
    w = torch.randn(cout, cin, *k, generator=g)
    scale = torch.rand(cout, generator=g) + 0.01
    bias = torch.randn(cout, generator=g)
    ab = torch.randn(cin, generator=g) * 0.3 if act_bias else None
    a = torch.where((x + ab.view(1, -1, 1, 1) if act_bias else x) >= 0, 1.0, -1.0)
    dot = F.conv2d(
        a.double(), torch.where(w < 0, -1.0, 1.0).double(), None, stride, pad, dil
    ).float()  # exact: integers below 2^24
    want = dot * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)  # two roundings, no FMA
    words = pack_weight(w < 0).contiguous()
    geom = _Geom(cin, cout, *k, stride, stride, pad, pad, dil, dil)
    for name in VARIANTS:
        variant = bconv_lib.ob_kernel_variant(name.encode())
        if variant < 0:
            continue
        conv = bconv_lib.ob_bconv_prepare(
            ctypes.byref(geom),
            words.data_ptr(),
            scale.data_ptr(),
            bias.data_ptr(),
            ab.data_ptr() if act_bias else None,
            variant,
        )
        assert conv
        scratch = torch.empty(bconv_lib.ob_bconv_scratch_bytes(conv, n, *hw), dtype=torch.uint8)
        y = torch.full_like(want, float("nan"))
        bconv_lib.ob_bconv_run(conv, x.data_ptr(), n, *hw, y.data_ptr(), scratch.data_ptr(), 1)
        bconv_lib.ob_bconv_free(conv)
        assert torch.equal(y, want), name
