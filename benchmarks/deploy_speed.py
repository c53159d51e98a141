"""Every figure of the C runtime's deployment goals in one run: a table and ratios.

    python benchmarks/deploy_speed.py            # about 3 minutes on a busy 2-core machine
    python benchmarks/deploy_speed.py --quick    # about 1 minute, noisier
    python benchmarks/deploy_speed.py --lce-python /path/to/.venv-larq/bin/python

Everything runs on one thread. Candidates of one comparison are timed side by side in this
process, in alternating rounds (this machine is shared; alternating spreads the noise over
them), and each keeps its best call; the ratio is the baseline's best over the runtime's best.
The figures, against the goals of the deployment issue:

1. ResNet-20 (3x32x32, ``create_model("resnet20", bits="1w1a")``, BatchNorm statistics from a
   few train-mode passes, exported with ``onebit.deploy.export``), batch 1 and 64: the runtime
   through the Python binding (``onebit.deploy.runtime.Runtime``) and through ``onebit-run
   --bench 3`` (no Python; it prints the median of its 3 runs: the best process is shown)
   against PyTorch fp32 running the full-precision twin (``method="fp"``), the better of NCHW
   and channels-last input. Goals: >= 8x at batch 1, >= 6x at batch 64.
2. Bi-Real-Net-18 (3x224x224) batch 1 against PyTorch fp32 ResNet-18 (``create_model
   ("resnet18", method="fp")``; also Bi-Real-18's own fp twin, the same convs), goal >= 6x; and
   against Larq Compute Engine (``benchmarks/lce_speed.py`` run by ``--lce-python``, default
   ``.venv-larq/bin/python``), alternating with ``onebit-run`` processes, each side's best
   call of as many (40 a round after warm-up calls, LCE's best mode), goal >= 3.5x with the
   ``avx2`` kernel, >= 5x with ``avx512``. The avx2 goal is set for AVX2-only CPUs: on a CPU
   with AVX-512 both LCE and ``onebit-run --kernel avx2`` also run with AVX-512 hidden from
   them (``benchmarks/hide_avx512.c``, CPUID faulting), so that each runs its own AVX2 code.
3. ResNet-18's binary 3x3 layers: the ``portable`` kernel (and the best this CPU runs) against
   PyTorch fp32 ``F.conv2d``, goal >= 2x: the kernel's own call ``ob_bconv_run`` in C (through
   benchmarks/runtime_kernels.py's shim; float input to float output, as ``F.conv2d``), and
   beside it the layer as a one-node graph through the binding
   (:func:`onebit.deploy.bench.conv_rows`, which adds ctypes and the copy out of the arena).
4. ``runtime/build/onebit-run``'s size (< 1 MB), its peak RSS classifying one image with
   Bi-Real-Net-18 (< 40 MB; GNU ``time -f %M``), and the time of ``onebit_load_file``
   on that file (read, check, crc32, plan the arena; < 50 ms).
5. Instructions per 64 binary multiply-adds in each SIMD kernel's inner loop, counted from
   ``objdump -d`` of runtime/src/bconv.c as built here (x86-64) and cross-built for aarch64
   (``aarch64-linux-gnu-gcc``; there is no ARM board here, so no NEON time: qemu-aarch64 runs
   the static aarch64 ``onebit-run`` on ResNet-20 to check that it agrees with this machine's).

Not a test: nothing here asserts a time. The runtime is built first (``make -C runtime``, which
rebuilds only what changed), and the binding's figures are taken through that build's
``libonebit.so`` (the code ``onebit-run`` links); rows marked "pip extension" run the same file
through the extension ``pip install`` / ``setup.py build_ext --inplace`` built, which is what
``onebit.deploy.load`` uses (``$ONEBIT_RUNTIME_LIB`` set: that library for every binding row).
Rebuild the extension after editing runtime/src.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

import onebit
from onebit.deploy import export
from onebit.deploy.bench import conv_rows
from onebit.deploy.engine import available_kernels
from onebit.deploy.runtime import LIBRARY_ENV, Runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_kernels  # benchmarks/runtime_kernels.py: the per-layer C shim

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
CLI = RUNTIME / "build" / "onebit-run"
LCE_LINE = re.compile(r"lce birealnet18 batch1 threads1 best_ms=([\d.]+) median_ms=([\d.]+)")
LCE_ROW = re.compile(r"^\| ([a-z_+]+(?: \(best\))?) +\| +([\d.]+) \| +([\d.]+) \|$", re.M)
MAKE_LIB = RUNTIME / "build" / "libonebit.so"
CLI_LINE = re.compile(r"batch (\d+): ([\d.]+) ms per batch.*best ([\d.]+) ms")


# ------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)  # seconds

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def race(calls: dict[str, Callable[[], object]], rounds: int, seconds: float) -> dict[str, Timing]:
    """Time the candidates in ``rounds`` alternating rounds of at least ``seconds`` each (two
    warm-up calls first). A call that returns a float reports its own time (seconds)."""
    timings = {name: Timing() for name in calls}
    for fn in calls.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                reported = fn()
                took = time.perf_counter() - t0
                timings[name].samples.append(reported if isinstance(reported, float) else took)
                if time.perf_counter() - start >= seconds:
                    break
    return timings


# onebit-run --bench prints the median of its repeats; a few per process, so that the best
# process is near the best call (on a busy machine a median of many is not)
CLI_REPEATS = 3


def cli_bench(
    model: Path,
    images: Path,
    batch: int,
    kernel: str = "auto",
    calls: int = CLI_REPEATS,
    best: bool = False,
    env: dict[str, str] | None = None,
) -> float:
    """``onebit-run --bench calls``: its median time per batch (``best``: its best call), in
    seconds; ``env``: the process's environment."""
    args = ["--batch", str(batch), "--kernel", kernel, "--bench", str(calls)]
    done = subprocess.run(
        [str(CLI), str(model), str(images), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    match = CLI_LINE.search(done.stdout)
    if match is None:
        sys.exit(f"deploy_speed.py: unexpected onebit-run output: {done.stdout!r}")
    return float(match.group(3 if best else 2)) / 1e3


# ---------------------------------------------------------------------------------- helpers


def cpu_description() -> str:
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        name = fields.get("Model name", name).strip()
        if fields.get("Hypervisor vendor"):
            name += f" under {fields['Hypervisor vendor'].strip()}"
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vpopcntdq", "asimd") if f in flags]
    return f"{name}; {os.cpu_count()} CPUs; {', '.join(isa) or 'no SIMD flags read'}"


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "runtime", "src")
    return (
        f"{git('rev-parse', '--short', 'HEAD')}{' + uncommitted runtime/src edits' * bool(dirty)}"
    )


def make(*args: str) -> None:
    done = subprocess.run(["make", "-s", "-C", str(RUNTIME), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"deploy_speed.py: make -C runtime {' '.join(args)} failed:\n{done.stderr}")


def exported(name: str, tmp: Path, batch: int, passes: int) -> tuple[Path, torch.nn.Module]:
    """The 1w1a registry model ``name`` with BatchNorm statistics from ``passes`` train-mode
    forwards of random batches, exported to ``tmp/name.onebit``."""
    model = onebit.create_model(name, bits="1w1a")
    size = onebit.models.default_input_size(name)
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, *size))
    path = tmp / f"{name}.onebit"
    export(model.eval(), path)
    return path, model


def twin_calls(name: str, x: torch.Tensor, label: str) -> dict[str, Callable[[], object]]:
    """PyTorch fp32 calls of ``name``'s full-precision twin, NCHW and channels-last."""
    twin = onebit.create_model(name, method="fp").eval()
    xl = x.contiguous(memory_format=torch.channels_last)
    twin_cl = onebit.create_model(name, method="fp").eval().to(memory_format=torch.channels_last)
    twin_cl.load_state_dict(twin.state_dict())

    def call(m: torch.nn.Module, xi: torch.Tensor) -> None:
        with torch.no_grad():
            m(xi)

    return {f"{label} NCHW": partial(call, twin, x), f"{label} NHWC": partial(call, twin_cl, xl)}


def images_npy(path: Path, n: int, c: int, size: int) -> Path:
    """``n`` random uint8 images (n, c, size, size) as a .npy file for onebit-run."""
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, (n, c, size, size), dtype=np.uint8))
    return path


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [headers, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


GOALS: list[tuple[str, str, str, bool | None]] = []  # figure, measured, goal, met


def goal(figure: str, measured: str, target: str, met: bool | None) -> None:
    GOALS.append((figure, measured, target, met))


# ----------------------------------------------------------------------------------- parts


def runtime_with(path: Path, library: Path) -> Runtime:
    """``Runtime.load(path)`` through the shared library ``library``."""
    saved = os.environ.get(LIBRARY_ENV)
    os.environ[LIBRARY_ENV] = str(library)
    try:
        return Runtime.load(path)
    finally:
        if saved is None:
            del os.environ[LIBRARY_ENV]
        else:
            os.environ[LIBRARY_ENV] = saved


def extension() -> Path | None:
    """The runtime extension ``pip install`` built (onebit/deploy/_runtime*.so), if any."""
    built = sorted(Path(onebit.deploy.runtime.__file__).parent.glob("_runtime*.so"))
    return built[0] if built else None


def runtime_calls(path: Path, x: np.ndarray, kernel: str | None = None) -> dict:
    """The binding's calls of ``path``: through the make build (the library onebit-run links),
    and through the pip-built extension (what ``onebit.deploy.load`` uses once installed)."""
    libraries = {"make build": MAKE_LIB}
    if extension() is not None and os.environ.get(LIBRARY_ENV) is None:
        libraries["pip extension"] = extension()
    calls = {}
    for label, library in libraries.items():
        rt = runtime_with(path, library)
        rt.set_kernel(kernel or "auto")
        calls[f"binding, {label}, {rt.kernel}"] = partial(rt, x)
    return calls


def part_resnet20(tmp: Path, rounds: int, seconds: float) -> None:
    path, _ = exported("resnet20", tmp, batch=64, passes=4)
    print(f"\n1. resnet20 1w1a (3x32x32, {path.stat().st_size:,} B .onebit), 1 thread")
    rows = []
    for batch, target in ((1, 8.0), (64, 6.0)):
        x = torch.randn(batch, 3, 32, 32)
        images = images_npy(tmp / f"r20_{batch}.npy", batch, 3, 32)
        calls = twin_calls("resnet20", x, "fp32 twin")
        calls.update(runtime_calls(path, x.numpy()))
        calls[f"onebit-run --bench {CLI_REPEATS}"] = partial(cli_bench, path, images, batch)
        t = race(calls, rounds, seconds)
        fp = min(t["fp32 twin NCHW"].best, t["fp32 twin NHWC"].best)
        ratios = {}
        for name, timing in t.items():
            if not name.startswith("fp32"):
                ratios[name] = fp / timing.best
            ratio = f"{ratios[name]:.1f}x" if name in ratios else ""
            rows.append([name, str(batch), ms(timing.best), ms(timing.median), ratio])
        made = [r for name, r in ratios.items() if "pip" not in name]
        goal(
            f"resnet20 batch {batch} vs PyTorch fp32 twin",
            ", ".join(f"{r:.1f}x ({name.rsplit(',', 1)[0]})" for name, r in ratios.items()),
            f">= {target:g}x",
            min(made) >= target,
        )
    print(table(["candidate", "batch", "best ms", "median ms", "fp32 / runtime"], rows))


def part_birealnet18(tmp: Path, rounds: int, seconds: float, lce_args) -> Path:
    path, _ = exported("birealnet18", tmp, batch=4, passes=2)
    size = path.stat().st_size
    print(f"\n2. birealnet18 1w1a (3x224x224, {size / 2**20:.2f} MiB .onebit), batch 1, 1 thread")
    x = torch.randn(1, 3, 224, 224)
    images = images_npy(tmp / "bireal_1.npy", 1, 3, 224)
    kernels = [k for k in ("avx512", "avx2", "neon", "portable") if k in available_kernels()]
    calls = twin_calls("resnet18", x, "resnet18 fp32")
    calls.update(twin_calls("birealnet18", x, "birealnet18 fp32"))
    for kernel in kernels:
        rt = runtime_with(path, MAKE_LIB)
        rt.set_kernel(kernel)
        calls[f"binding, make build, {kernel}"] = partial(rt, x.numpy())
    if extension() is not None and os.environ.get(LIBRARY_ENV) is None:
        rt = runtime_with(path, extension())
        calls[f"binding, pip extension, {rt.kernel}"] = partial(rt, x.numpy())
    calls[f"onebit-run --bench {CLI_REPEATS}, {kernels[0]}"] = partial(
        cli_bench, path, images, 1, kernels[0]
    )
    t = race(calls, rounds, seconds)
    resnet18 = min(t["resnet18 fp32 NCHW"].best, t["resnet18 fp32 NHWC"].best)
    bireal_fp = min(t["birealnet18 fp32 NCHW"].best, t["birealnet18 fp32 NHWC"].best)
    rows = []
    for name, timing in t.items():
        row = [name, ms(timing.best), ms(timing.median)]
        if "fp32" in name:
            row += ["", ""]
        else:
            row += [f"{resnet18 / timing.best:.1f}x", f"{bireal_fp / timing.best:.1f}x"]
        rows.append(row)
    print(table(["candidate", "best ms", "median ms", "resnet18 fp32 /", "bireal fp32 /"], rows))
    best = t[f"binding, make build, {kernels[0]}"].best
    goal(
        "birealnet18 batch 1 vs PyTorch fp32 ResNet-18",
        f"{resnet18 / best:.1f}x (binding, make build, {kernels[0]})",
        ">= 6x",
        resnet18 / best >= 6,
    )
    lce_race(path, images, kernels, min(rounds, 3), *lce_args)
    return path


# glibc's own CPU features (its string functions) are fixed before any library loads: hidden
# through its tunables; everything loaded after sees hide_avx512.so's CPUID
GLIBC_NO_AVX512 = "glibc.cpu.hwcaps=" + ",".join(
    f"-AVX512{f}" for f in ("F", "VL", "BW", "DQ", "CD", "ER", "PF")
)


def as_avx2_env(tmp: Path) -> tuple[dict[str, str] | None, str]:
    """An environment in which a process sees this CPU as AVX2-only (benchmarks/hide_avx512.c
    preloaded, glibc's AVX-512 hidden), and a line saying what it is; None where this CPU has no
    AVX-512 to hide (the AVX2 figure is then the plain one) or it cannot be hidden."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx512f" not in flags:
        return None, "this CPU has no AVX-512: every side runs its AVX2 code as it is"
    if " cpuid_fault" not in flags:
        return None, "no CPUID faulting here (cpuid_fault): AVX-512 cannot be hidden from LCE"
    lib = tmp / "hide_avx512.so"
    source = ROOT / "benchmarks" / "hide_avx512.c"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None, "no C compiler to build benchmarks/hide_avx512.c"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    env = dict(os.environ, LD_PRELOAD=str(lib), GLIBC_TUNABLES=GLIBC_NO_AVX512)
    env.pop("PYTHONFAULTHANDLER", None)  # its SIGSEGV handler would take the CPUID faults
    probe = subprocess.run(
        [sys.executable, "-c", "pass"], env=dict(env, HIDE_AVX512_REPORT="1"), capture_output=True
    )
    if probe.returncode != 0 or b"avx512f 0" not in probe.stderr:
        return None, f"hide_avx512.so did not take: {probe.stderr.decode().strip()[-300:]}"
    return env, (
        "AVX-512 hidden from both sides (benchmarks/hide_avx512.c: CPUID faulting, AVX-512 and "
        "AMX bits cleared; GLIBC_TUNABLES for glibc): each picks its own AVX2 code"
    )


def lce_race(path, images, kernels, rounds, python, script, tflite, quick) -> None:
    """Larq Compute Engine (benchmarks/lce_speed.py in its own Python) against onebit-run on
    Bi-Real-Net-18, in alternating rounds, each side timed alike: each round one lce_speed.py
    run (per mode 5 untimed calls, then 2 x 20 timed calls: its best) then per kernel one
    onebit-run process (1 untimed run, then as many timed calls: its best); each keeps its
    best call over the rounds. The avx2 goal is for AVX2-only CPUs: on a CPU with AVX-512 each
    round also runs LCE, and onebit-run's avx2, with AVX-512 hidden (as_avx2_env)."""
    targets = {"avx2": 3.5, "avx512": 5.0}
    how = (
        "make lce-venv (make larq-venv, then .venv-larq/bin/pip install "
        "larq-compute-engine==0.16.0 larq-zoo==2.4.0), then --lce-python .venv-larq/bin/python"
    )
    problem = None
    if python is None or not python.exists():
        problem = f"no Python with Larq Compute Engine ({python or '.venv-larq/bin/python'}): {how}"
    elif not script.exists():
        problem = f"{script} is missing (benchmarks/lce_speed.py)"
    if problem:
        print(f"\n   LCE: {problem}")
        for kernel, target in targets.items():
            goal(f"birealnet18 vs LCE, kernel {kernel}", "LCE not run", f">= {target:g}x", None)
        return
    modes = "indirect_bgemm" if quick else "indirect_bgemm,indirect_bgemm+xnnpack,bgemm"
    calls, lce_rounds = (10, 1) if quick else (20, 2)
    runs = ["--runs", str(calls), "--rounds", str(lce_rounds)]
    ours = [k for k in ("avx2", "avx512") if k in kernels] or kernels[:1]
    hidden, how_hidden = as_avx2_env(path.parent) if "avx2" in ours else (None, "")
    # the LCE runs: this CPU as it is, and (hidden) as an AVX2-only one
    sides = {"": None, **({" (AVX-512 hidden)": hidden} if hidden else {})}
    lce_best: dict[str, tuple[float, str]] = {}
    cli = {k: Timing() for k in ours}
    print(
        f"\n   LCE against onebit-run, {rounds} alternating rounds: {python} {script} "
        f"--threads 1 --modes {modes} {' '.join(runs)}"
    )
    if how_hidden:
        print(f"   avx2: {how_hidden}")
    for _ in range(rounds):
        for side, env in sides.items():
            args = [str(python), str(script), "--threads", "1", "--modes", modes, *runs]
            args += ["--load", str(tflite)] if tflite.exists() else ["--save", str(tflite)]
            done = subprocess.run(args, capture_output=True, text=True, env=env)
            if done.returncode != 0 or not LCE_LINE.search(done.stdout):
                print(f"   LCE{side} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
                return
            for mode, best_ms, _median in LCE_ROW.findall(done.stdout):
                if side not in lce_best or float(best_ms) < lce_best[side][0]:
                    lce_best[side] = (float(best_ms), mode.replace(" (best)", "").strip())
            header = next(line for line in done.stdout.splitlines() if line.startswith("LCE "))
        for kernel in ours:  # the best of as many calls as LCE's per mode
            env = hidden if kernel == "avx2" else None
            cli[kernel].samples.append(
                cli_bench(path, images, 1, kernel, calls * lce_rounds, True, env)
            )
    print(f"   {header}")
    rows = [[f"LCE{side} {mode}", f"{t:.2f}", ""] for side, (t, mode) in lce_best.items()]
    for kernel in ours:
        side = " (AVX-512 hidden)" if kernel == "avx2" and hidden else ""
        lce_ms = lce_best[side][0]
        r = lce_ms / (cli[kernel].best * 1e3)
        rows.append(
            [
                f"onebit-run --bench {calls * lce_rounds}, {kernel}{side}",
                ms(cli[kernel].best),
                f"{r:.1f}x",
            ]
        )
        if kernel in targets:
            goal(
                f"birealnet18 batch 1 vs LCE{side}, kernel {kernel}",
                f"{r:.1f}x ({lce_ms:.1f} / {cli[kernel].best * 1e3:.1f} ms)",
                f">= {targets[kernel]:g}x",
                r >= targets[kernel],
            )
    print(table(["candidate", "best ms", "LCE / onebit-run"], rows))


def part_layers(seconds: float, tmp: Path) -> None:
    kernels = ["portable"] + [k for k in available_kernels()[:1] if k != "portable"]
    print("\n3. ResNet-18 binary 3x3 convs (stride 1, pad 1), batch 1, 1 thread; ms per call")
    print("   PyTorch fp32 F.conv2d (NCHW, NHWC) against the kernel's call ob_bconv_run (in C:")
    print("   binarize and pack the float input, popcounts, scale and bias to the float output;")
    print("   runtime_kernels.py's shim), and the same layer as a one-node graph through the")
    print("   binding (onebit.deploy.bench.conv_rows: + ctypes, the copy out of the arena)")
    headers = ["shape", "fp32 NCHW", "fp32 NHWC"]
    for k in kernels:
        headers += [f"{k} call", "ratio", "graph"]
    saved = os.environ.get(LIBRARY_ENV)
    os.environ[LIBRARY_ENV] = saved or str(MAKE_LIB)  # conv_rows loads through the binding
    try:
        by_kernel = {k: conv_rows(batches=(1,), min_time=seconds, kernel=k) for k in kernels}
    finally:
        if saved is None:
            del os.environ[LIBRARY_ENV]
    shim = runtime_kernels.build(tmp, openmp=False)
    rows = []
    worst = float("inf")
    ratios = []
    for i, r in enumerate(by_kernel["portable"]):
        fp32 = min(r.torch_nchw, r.torch_nhwc)
        row = [f"{r.channels}x{r.size}x{r.size}", f"{r.torch_nchw:.3f}", f"{r.torch_nhwc:.3f}"]
        for k in kernels:
            index = shim.ob_kernel_variant(k.encode())
            c, hw = r.channels, r.size
            call = 1e3 * shim.ob_bench_seconds(index, 1, c, c, hw, hw, 3, 1, 1, 1, seconds)
            row += [f"{call:.3f}", f"{fp32 / call:.1f}x", f"{by_kernel[k][i].onebit:.3f}"]
            if k == "portable":
                worst = min(worst, fp32 / call)
                ratios.append(f"{fp32 / call:.1f}")
        rows.append(row)
    print(table(headers, rows))
    goal("per layer, portable call vs PyTorch fp32", f"{', '.join(ratios)}x", ">= 2x", worst >= 2)


def part_footprint(bireal: Path, tmp: Path, repeats: int) -> None:
    print("\n4. footprint: onebit-run and birealnet18")
    size = CLI.stat().st_size
    images = images_npy(tmp / "bireal_one.npy", 1, 3, 224)
    # peak RSS of one classification, by GNU time (the rusage of a child forked from this
    # process would count this process's own RSS: Linux keeps the high-water mark across exec)
    rss_mib, wall = None, None
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    if gnu_time:
        done = subprocess.run(
            [gnu_time, "-f", "%M %e", str(CLI), str(bireal), str(images)],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            kib, seconds = done.stderr.strip().splitlines()[-1].split()
            rss_mib, wall = int(kib) / 1024, float(seconds)
    # onebit_load_file: read, check every table, crc32, infer shapes, plan the arena
    lib = ctypes.CDLL(str(RUNTIME / "build" / "libonebit.so"))
    lib.onebit_load_file.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.onebit_load_file.argtypes += [ctypes.c_char_p, ctypes.c_size_t]
    lib.onebit_free.argtypes = [ctypes.c_void_p]
    err = ctypes.create_string_buffer(256)
    loads = []
    for _ in range(repeats):
        handle = ctypes.c_void_p()
        t1 = time.perf_counter()
        rc = lib.onebit_load_file(str(bireal).encode(), ctypes.byref(handle), err, 256)
        loads.append(time.perf_counter() - t1)
        if rc != 0:
            sys.exit(f"deploy_speed.py: onebit_load_file: {err.value.decode()}")
        lib.onebit_free(handle)
    load_best, load_med = min(loads), statistics.median(loads)
    file_mib = bireal.stat().st_size / 2**20
    state = onebit.create_model("birealnet18", bits="1w1a").state_dict()
    fp32_mib = sum(t.numel() * 4 for t in state.values() if t.is_floating_point()) / 2**20
    rss = f"{rss_mib:.1f} MiB" if rss_mib else "not measured (needs GNU time: apt-get install time)"
    rows = [
        ["runtime/build/onebit-run", f"{size:,} B", "< 1 MB"],
        ["peak RSS, onebit-run birealnet18 (1 image)", rss, "< 40 MB"],
        [f"onebit_load_file, birealnet18 ({file_mib:.2f} MiB)", f"{ms(load_best)} ms", "< 50 ms"],
        ["  (median of the loads)", f"{ms(load_med)} ms", ""],
        ["birealnet18 .onebit vs its fp32 weights", f"{file_mib:.2f} / {fp32_mib:.2f} MiB", ""],
    ]
    if wall is not None:
        rows.append(["onebit-run birealnet18 (1 image), whole process", f"{wall:.2f} s", ""])
    print(table(["figure", "measured", "goal"], rows))
    goal("onebit-run size", f"{size / 1e6:.2f} MB", "< 1 MB", size < 1e6)
    goal(
        "peak RSS running birealnet18",
        rss,
        "< 40 MB",
        None if rss_mib is None else rss_mib * 2**20 < 40e6,
    )
    goal("load time birealnet18", f"{load_best * 1e3:.1f} ms", "< 50 ms", load_best < 0.05)


# kernel: (function, its vector XOR, the register it XORs, 64-bit words per register, the
# popcount instruction its inner loop must hold)
LOOPS = {
    # avx2 XORs the low and the high nibbles apart: count its lookups, two per 4 word pairs
    "avx2": ("tile_avx2", ("vpshufb",), "%ymm", 2, "vpshufb"),
    "avx512": ("tile_avx512", ("vpxorq", "vpxord"), "%zmm", 8, "vpopcntq"),
    "neon": ("tile_neon", ("eor",), ".16b", 2, "cnt"),
}
VECTOR_OPERAND = re.compile(r"%[xyz]mm|\bv\d+\.|\b[qd]\d+\b")


def inner_loop(disassembly: str, function: str, xors, register: str, words: int, popcount: str):
    """The innermost loop of the functions named ``function``* with ``xors`` on ``register``
    vectors (each stands for ``words`` 64-bit word pairs XORed and counted) and a ``popcount``:
    (instructions, of them scalar (loop control, addresses), word pairs per iteration). A loop
    is a backward branch; its body the instructions from its target to the branch."""
    insns, inside = [], False
    for line in disassembly.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:", line)
        if head:
            inside = head.group(1).split(".")[0].startswith(function)  # and tile_avx2_half
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if inside and m:
            insns.append((int(m.group(1), 16), m.group(2), m.group(3)))
    best = None
    for addr, op, args in insns:
        if not (op.startswith(("j", "b", "cb", "tb")) and re.match(r"^[0-9a-f]+ <", args)):
            continue
        target = int(args.split()[0], 16)
        if target > addr:
            continue
        body = [(o, g) for a, o, g in insns if target <= a <= addr]
        vector_xors = [
            g for o, g in body if o in xors and register in g and len(set(g.split(","))) > 1
        ]
        innermost = best is None or len(body) < best[0]
        if vector_xors and any(o == popcount for o, _ in body) and innermost:
            control = sum(1 for _, g in body if not VECTOR_OPERAND.search(g))
            best = (len(body), control, len(vector_xors) * words)
    return best


def part_instructions(tmp: Path, qemu_check: bool) -> None:
    print("\n5. instructions per 64 binary multiply-adds in the kernels' inner loops")
    objdump = shutil.which("objdump")
    cross = shutil.which("aarch64-linux-gnu-gcc")
    cross_objdump = shutil.which("aarch64-linux-gnu-objdump")
    rows = []
    sources = []
    if objdump:
        host_o = RUNTIME / "build" / "bconv.o"
        sources.append((objdump, host_o, ("avx2", "avx512")))
    arm = tmp / "aarch64"
    if cross and cross_objdump:
        make(f"CC={cross}", f"BUILD={arm}", "LDFLAGS=-static", f"{arm}/onebit-run")
        sources.append((cross_objdump, arm / "bconv.o", ("neon",)))
    for tool, obj, kernels in sources:
        text = subprocess.run(
            [tool, "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True
        ).stdout
        for k in kernels:
            found = inner_loop(text, *LOOPS[k])
            cmd = f"{Path(tool).name} -d {obj.relative_to(tmp) if tmp in obj.parents else obj}"
            if found is None:
                rows.append([k, "-", "-", "-", "-", cmd])
                continue
            n, control, pairs = found
            simd = n - control
            rows.append(
                [
                    k,
                    f"{n} ({simd})",
                    f"{pairs * 64:,}",
                    f"{n / pairs:.2f}",
                    f"{simd / pairs:.2f}",
                    cmd,
                ]
            )
    headers = ["kernel", "loop insns (SIMD)", "binary MACs", "insns / 64 MACs", "SIMD only"]
    print(table([*headers, "from"], rows))
    if not (cross and cross_objdump):
        print(
            "   no aarch64 cross tools: apt-get install gcc-aarch64-linux-gnu qemu-user "
            "(the NEON row needs aarch64-linux-gnu-gcc and -objdump)"
        )
    print("   No ARM board here: the NEON kernel is counted, not timed.")
    qemu = shutil.which("qemu-aarch64")
    if qemu_check and cross and qemu and (arm / "onebit-run").exists():
        size = (arm / "onebit-run").stat().st_size
        path, _ = exported("resnet20", tmp, batch=16, passes=1)
        images = images_npy(tmp / "r20_qemu.npy", 32, 3, 32)
        host = subprocess.run(
            [str(CLI), str(path), str(images), "--top", "3"], capture_output=True, text=True
        )
        same = {}
        for kernel in ("neon", "portable"):
            done = subprocess.run(
                [
                    qemu,
                    str(arm / "onebit-run"),
                    str(path),
                    str(images),
                    "--kernel",
                    kernel,
                    "--top",
                    "3",
                ],
                capture_output=True,
                text=True,
            )
            same[kernel] = done.returncode == 0 and done.stdout == host.stdout
        agree = ", ".join(f"{k} {'agrees' if v else 'DIFFERS'}" for k, v in same.items())
        print(
            f"   static aarch64 onebit-run: {size:,} B; under qemu-aarch64 on ResNet-20, 32 "
            f"images, top-3 against this machine's: {agree}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    venv = ROOT / ".venv-larq" / "bin" / "python"
    parser.add_argument(
        "--lce-python",
        type=Path,
        default=venv if venv.exists() else None,
        help="a Python with larq-compute-engine and larq-zoo (default: .venv-larq/bin/python)",
    )
    parser.add_argument("--lce-script", type=Path, default=ROOT / "benchmarks" / "lce_speed.py")
    parser.add_argument(
        "--lce-tflite",
        type=Path,
        default=ROOT / "runs" / "lce" / "birealnet18.tflite",
        help="LCE's converted model: written on the first run, loaded after (the conversion "
        "takes ~40 s)",
    )
    args = parser.parse_args()
    rounds, seconds = (2, 0.3) if args.quick else (5, 1.0)

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    started = datetime.datetime.now().astimezone()
    make()  # runtime/build: libonebit.so and onebit-run from this checkout's sources
    print(f"deploy_speed.py, started {started:%Y-%m-%d %H:%M %Z}")
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, 1 thread; onebit {git_state()}")
    ext = os.environ.get(LIBRARY_ENV) or extension() or "not built"
    print(f"libraries: make build {MAKE_LIB.relative_to(ROOT)}; binding's own: {ext}")
    print(f"runtime kernels here: {', '.join(available_kernels())}")
    print(f"timing: {rounds} alternating rounds of >= {seconds} s per candidate, best call")

    lce_args = (args.lce_python, args.lce_script, args.lce_tflite, args.quick)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        part_resnet20(tmp, rounds, seconds)
        bireal = part_birealnet18(tmp, rounds, seconds, lce_args)
        part_layers(0.3 if args.quick else 1.0, tmp)
        part_footprint(bireal, tmp, 10 if args.quick else 30)
        part_instructions(tmp, qemu_check=True)

    print("\nGoals")
    rows = [[f, m, t, {True: "met", False: "NOT met", None: "-"}[ok]] for f, m, t, ok in GOALS]
    print(table(["figure", "measured", "goal", ""], rows))
    took = datetime.datetime.now().astimezone() - started
    print(f"finished {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} ({took.seconds} s)")


if __name__ == "__main__":
    main()
