"""What a figure was measured on, in one line: the CPU or GPU model and how much of it.

Training records it with every epoch (``machine`` in metrics.jsonl) and ``onebit report``
shows it beside the times, because a time means nothing without the machine it ran on.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch


@cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process; empty where it cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name, as ``lscpu`` prints it; ``"CPU"`` where it cannot be read."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU"


def cpu_has_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16): where it
    does not, bf16 autocast on the CPU is emulated and slower than fp32."""
    flags = _cpuinfo().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def describe(device: torch.device, processes: int = 1) -> str:
    """``"NVIDIA H200 x8"`` for ``processes`` GPUs; ``"Intel(R) Xeon(R) Processor, 2 cores,
    1 thread"`` for the CPU (the cores the machine has, the threads this process uses)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return name if processes == 1 else f"{name} x{processes}"
    threads = torch.get_num_threads()
    text = f"{cpu_name()}, {os.cpu_count()} cores, {threads} thread{'s' * (threads != 1)}"
    return text if processes == 1 else f"{text} x{processes} processes"
