"""C runtime binary conv (runtime/src/bconv.c) vs PyTorch fp32 conv, per layer, side by side.

Builds runtime/src/bconv.c and the timing shim runtime/bench/bconv_timing.c into a shared
library, then for each layer shape (ResNet-18's and ResNet-20's 3x3 stride-1 convs, batch 1)
times torch.nn.functional.conv2d on fp32 and every kernel variant this CPU runs, in this one
process, best of repeats. A variant's time is a whole ob_bconv_run call: binarize and pack the
float input, gather the fields, popcount, scale and bias to float output. The ratio is PyTorch's
time over the variant's (> 1: the binary kernel is faster).

    python benchmarks/runtime_kernels.py                  # 1 thread (the default)
    python benchmarks/runtime_kernels.py --threads 2 --seconds 1.0

With --threads > 1 the library is built with -fopenmp and torch uses as many threads.
"""

import argparse
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "runtime/src/bconv.c", ROOT / "runtime/bench/bconv_timing.c"]
VARIANTS = ["portable", "avx2", "avx512", "neon"]
LAYERS = [  # (network, channels, height = width)
    ("resnet18", 64, 56),
    ("resnet18", 128, 28),
    ("resnet18", 256, 14),
    ("resnet18", 512, 7),
    ("resnet20", 16, 32),
    ("resnet20", 32, 16),
    ("resnet20", 64, 8),
]


def build(out: Path, openmp: bool) -> ctypes.CDLL:
    """Compile the shared library with the system C compiler; load it."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("runtime_kernels.py: no C compiler (cc or gcc) on PATH")
    lib = out / "libbconv_bench.so"
    flags = ["-std=c11", "-O3", "-ffp-contract=off", "-shared", "-fPIC"]
    subprocess.run(
        [cc, *flags, *(["-fopenmp"] if openmp else []), *map(str, SOURCES), "-o", str(lib)],
        check=True,
    )
    dll = ctypes.CDLL(str(lib))
    dll.ob_kernel_variant.argtypes = [ctypes.c_char_p]
    dll.ob_kernel_variant.restype = ctypes.c_int
    dll.ob_bench_seconds.argtypes = [ctypes.c_int] * 10 + [ctypes.c_double]
    dll.ob_bench_seconds.restype = ctypes.c_double
    return dll


def torch_seconds(channels: int, hw: int, min_total_s: float) -> float:
    """Best time of F.conv2d (3x3, stride 1, padding 1, fp32, batch 1) over repeats."""
    x = torch.randn(1, channels, hw, hw)
    w = torch.randn(channels, channels, 3, 3)
    with torch.no_grad():
        F.conv2d(x, w, padding=1)
        best, start, reps = float("inf"), time.perf_counter(), 0
        while reps < 5 or time.perf_counter() - start < min_total_s:
            t0 = time.perf_counter()
            F.conv2d(x, w, padding=1)
            best = min(best, time.perf_counter() - t0)
            reps += 1
    return best


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.5, help="per cell, at least")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dll = build(Path(tmp), openmp=args.threads > 1)
        variants = [(v, dll.ob_kernel_variant(v.encode())) for v in VARIANTS]
        variants = [(name, index) for name, index in variants if index >= 0]
        print(f"CPU: {cpu_model()}; {args.threads} thread(s); torch {torch.__version__}")
        print("3x3 conv, stride 1, padding 1, batch 1; ms per call (PyTorch fp32 ms / variant ms)")
        header = f"{'net':<9}{'layer':<12}{'torch fp32':>11}"
        print(header + "".join(f"{name:>20}" for name, _ in variants))
        for net, c, hw in LAYERS:
            row = f"{net:<9}{f'{c}x{hw}x{hw}':<12}"
            t_torch = torch_seconds(c, hw, args.seconds)
            row += f"{t_torch * 1e3:>11.3f}"
            for _, index in variants:
                t = dll.ob_bench_seconds(
                    index, 1, c, c, hw, hw, 3, 1, 1, args.threads, args.seconds
                )
                row += f"{t * 1e3:>11.3f} ({t_torch / t:5.2f}x)"
            print(row, flush=True)


if __name__ == "__main__":
    main()
