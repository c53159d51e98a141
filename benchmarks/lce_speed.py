"""Inference latency of Larq Compute Engine (LCE), the maintained BNN engine, on Bi-Real-Net-18.

The peer of ``onebit bench --models birealnet18 --batch 1 --threads 1`` (docs/deploy.md).
Runs in its own virtual environment (``make lce-venv``: ``make larq-venv`` plus
larq-compute-engine 0.16.0 and larq-zoo 2.4.0), never beside the test suite:

    make lce-venv
    .venv-larq/bin/python benchmarks/lce_speed.py                  # build, convert, time
    .venv-larq/bin/python benchmarks/lce_speed.py --save runs/lce/birealnet18.tflite
    .venv-larq/bin/python benchmarks/lce_speed.py --load runs/lce/birealnet18.tflite

The model is larq-zoo's ``literature.BiRealNet`` (224x224x3, 1000 classes, 11,699,112
parameters) with ``weights=None``: random initialisation, no download; the weights do not
change the time. ``lce.convert_keras_model`` with its default options (target "arm") turns its
16 binary 3x3 convs into LCE's bitpacked ``LceBconv2d`` ops; the stem, the 1x1 downsample
shortcuts and the dense head stay float32. The ``.tflite`` is timed at batch 1 on random
input (the same input through Keras: its softmax output against each mode's, a check that
the conversion holds; a binary net's sign flips near 0 make small differences grow) through
``lce.testing.Interpreter`` with ``num_threads`` threads (1), in each mode it
can select:

* ``bgemm``: the default LceBconv2d kernel (im2col + ruy-based binary GEMM);
* ``indirect_bgemm``: ``use_indirect_bgemm=True``, the indirect binary GEMM kernel;
* ``reference``: ``use_reference_bconv=True``, the reference LceBconv2d kernel;

each with and without ``use_xnnpack=True`` (TFLite's XNNPack delegate for the float ops).
After ``--warmup`` untimed calls per mode, ``--runs`` timed calls per mode in ``--rounds``
alternating rounds (this machine is shared; alternating spreads the noise over the modes);
each row gives the best and the median call. The best mode (lowest best call: on a shared
machine the minimum is the least noisy figure, and the one ``onebit bench`` reports) is marked
and repeated in the last line, one machine-readable line:

    lce birealnet18 batch1 threads1 best_ms=... median_ms=... mode=... tflite_bytes=...
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq 0.13 / larq-zoo need Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KERNELS = {
    "bgemm": {},
    "indirect_bgemm": {"use_indirect_bgemm": True},
    "reference": {"use_reference_bconv": True},
}
MODES = {
    f"{name}{suffix}": {**flags, **xnn}
    for name, flags in KERNELS.items()
    for suffix, xnn in (("", {}), ("+xnnpack", {"use_xnnpack": True}))
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_and_convert(image_size: int):
    """larq-zoo's Bi-Real-Net-18, random init, converted by LCE with default options."""
    import larq_compute_engine as lce
    import larq_zoo as lqz
    import numpy as np

    model = lqz.literature.BiRealNet(weights=None, input_shape=(image_size, image_size, 3))
    start = time.perf_counter()
    flatbuffer = lce.convert_keras_model(model)
    print(
        f"larq-zoo {lqz.__version__} BiRealNet: {model.count_params():,} parameters; "
        f"converted in {time.perf_counter() - start:.0f} s"
    )
    x = np.random.default_rng(1).standard_normal((1, image_size, image_size, 3), "float32")
    return flatbuffer, x, model.predict(x, verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="interpreter num_threads")
    parser.add_argument("--runs", type=int, default=60, help="timed calls per mode")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per mode first")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated subset of: {', '.join(MODES)}",
    )
    parser.add_argument("--save", type=Path, help="write the converted .tflite here")
    parser.add_argument("--load", type=Path, help="time this .tflite instead of converting")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")

    import larq_compute_engine as lce
    import numpy as np
    import tensorflow as tf

    if args.load:
        flatbuffer, reference = args.load.read_bytes(), None
        x = np.random.default_rng(1).standard_normal(
            (1, args.image_size, args.image_size, 3), "float32"
        )
    else:
        flatbuffer, x, reference = build_and_convert(args.image_size)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_bytes(flatbuffer)
    size = len(flatbuffer)

    interpreters = {
        m: lce.testing.Interpreter(flatbuffer, num_threads=args.threads, **MODES[m]).interpreter
        for m in modes
    }
    agree = []
    for it in interpreters.values():  # warm-up, and the outputs against Keras's
        for _ in range(args.warmup):
            out = it.predict([x])[0]
        if reference is not None:
            agree.append((float(np.abs(out - reference).max()), out.argmax() == reference.argmax()))
    times: dict[str, list[float]] = {m: [] for m in modes}
    per_round = -(-args.runs // args.rounds)
    for _ in range(args.rounds):
        for m, it in interpreters.items():
            for _ in range(per_round):
                start = time.perf_counter()
                it.predict([x])
                times[m].append((time.perf_counter() - start) * 1e3)

    stats = {m: (min(t), statistics.median(t)) for m, t in times.items()}
    best = min(stats, key=lambda m: stats[m])
    print(
        f"LCE {lce.__version__}, TensorFlow {tf.__version__}, {cpu_model()}; "
        f"batch 1, {args.image_size}x{args.image_size}x3, num_threads={args.threads}; "
        f"{len(times[best])} calls per mode in {args.rounds} alternating rounds after "
        f"{args.warmup} warm-up calls; .tflite {size:,} bytes ({size / 2**20:.2f} MiB)"
    )
    if agree:
        print(
            f"outputs against Keras's (softmax, random weights): max |diff| "
            f"{max(d for d, _ in agree):.1e}, same top-1 in {sum(a for _, a in agree)} of "
            f"{len(agree)} modes"
        )
    print(f"| {'mode':<30} | {'best ms':>8} | {'median ms':>9} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 11}|")
    for m, (lo, med) in stats.items():
        print(f"| {m + (' (best)' if m == best else ''):<30} | {lo:8.1f} | {med:9.1f} |")
    lo, med = stats[best]
    print(
        f"lce birealnet18 batch1 threads{args.threads} best_ms={lo:.1f} median_ms={med:.1f} "
        f"mode={best} tflite_bytes={size}"
    )


if __name__ == "__main__":
    main()
