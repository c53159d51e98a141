"""benchmarks/hide_avx512.c: the LD_PRELOAD library that shows an AVX-512 CPU to a process as
AVX2-only (deploy_speed.py's AVX2 race against LCE). Runs where there is something to hide and
the kernel can: x86-64 Linux, AVX-512, CPUID faulting, a C compiler."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPUINFO = Path("/proc/cpuinfo")
FLAGS = CPUINFO.read_text() if CPUINFO.exists() else ""

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64"
    or " avx512f" not in FLAGS
    or " cpuid_fault" not in FLAGS
    or shutil.which("gcc") is None,
    reason="needs x86-64 Linux with AVX-512, CPUID faulting (cpuid_fault) and gcc",
)

PROBE = r"""
#include <cpuid.h>
#include <stdio.h>
int main(void) {
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    __builtin_cpu_init();
    printf("cpuid avx512f %u avx2 %u vpopcntdq %u; gcc avx512f %d avx2 %d\n", (b >> 16) & 1,
           (b >> 5) & 1, (c >> 14) & 1, !!__builtin_cpu_supports("avx512f"),
           !!__builtin_cpu_supports("avx2"));
    return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hide")
    source = ROOT / "benchmarks" / "hide_avx512.c"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    subprocess.run(["gcc", *flags, "-o", str(out / "hide.so"), str(source)], check=True)
    (out / "probe.c").write_text(PROBE)
    (out / "crash.c").write_text("int main(void) { volatile int *p = 0; return *p; }\n")
    for name in ("probe", "crash"):
        subprocess.run(["gcc", "-O0", "-o", str(out / name), str(out / f"{name}.c")], check=True)
    return out


def run(built: Path, program: str, preload: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, HIDE_AVX512_REPORT="1")
    if preload:
        env["LD_PRELOAD"] = str(built / "hide.so")
    return subprocess.run([str(built / program)], env=env, capture_output=True, text=True)


def test_the_process_sees_avx2_but_no_avx512(built):
    plain = run(built, "probe", preload=False)
    assert plain.stdout.startswith("cpuid avx512f 1 avx2 1")
    assert plain.stdout.strip().endswith("gcc avx512f 1 avx2 1")
    hidden = run(built, "probe", preload=True)
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stdout.strip() == "cpuid avx512f 0 avx2 1 vpopcntdq 0; gcc avx512f 0 avx2 1"
    assert "hide_avx512: active" in hidden.stderr
    emulated = hidden.stderr.strip().splitlines()[-1]
    assert emulated.startswith("hide_avx512: ") and "CPUID instructions emulated" in emulated
    assert int(emulated.split()[1]) >= 2  # the probe's own CPUID and libgcc's


def test_a_real_segfault_still_kills_the_process(built):
    crashed = run(built, "crash", preload=True)
    assert crashed.returncode == -signal.SIGSEGV
