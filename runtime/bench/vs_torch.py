"""The C runtime against PyTorch fp32, side by side in one process, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src python3 runtime/bench/vs_torch.py resnet20 1 64
    OMP_NUM_THREADS=1 PYTHONPATH=src python3 runtime/bench/vs_torch.py birealnet18 1

For each model name: ``onebit.create_model(name, bits="1w1a")`` (its default method) gets a few
train-mode forwards (BatchNorm statistics), is exported to a temporary ``.onebit`` file and
loaded with ``onebit.deploy.runtime.Runtime`` (the built extension, or ``ONEBIT_RUNTIME_LIB``);
the full-precision twin is ``onebit.create_model(name, method="fp")`` (resnet18 for
birealnet18), timed under ``torch.no_grad()`` in NCHW and channels-last, the better counted.
Runtime and PyTorch are timed in alternating rounds; each figure is the best of all repeats (the
machine may be shared: the best is the repeatable number). ``--profile`` also prints the
runtime's per-node profile (ONEBIT_PROFILE) of the timed runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TWINS = {"birealnet18": "resnet18"}
SIDES = {"resnet20": 32}  # input side; ImageNet families 224


def best_of(fn, arg, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("batches", nargs="*", type=int, default=[1])
    ap.add_argument("--repeats", type=int, default=0, help="per round (default: by model)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.profile:
        os.environ["ONEBIT_PROFILE"] = "1"  # read when the runtime loads the model

    import numpy as np
    import torch

    import onebit
    from onebit import deploy
    from onebit.deploy.runtime import Runtime

    torch.set_num_threads(1)
    torch.manual_seed(0)
    side = SIDES.get(args.model, 224)
    model = onebit.create_model(args.model, bits="1w1a")
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8 if side < 64 else 2, 3, side, side))
    twin_name = TWINS.get(args.model, args.model)
    twin = onebit.create_model(twin_name, method="fp").eval()
    twin_cl = onebit.create_model(twin_name, method="fp").eval()
    twin_cl = twin_cl.to(memory_format=torch.channels_last)
    repeats = args.repeats or (20 if side < 64 else 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onebit"
        deploy.export(model.eval(), path)
        rt = Runtime.load(path)
    print(
        f"{args.model} (runtime kernel {rt.kernel}) vs PyTorch {torch.__version__} fp32 "
        f"{twin_name}, 1 thread, best of {args.rounds} x {repeats}"
    )
    for batch in args.batches:
        x = torch.randn(batch, 3, side, side)
        xn, xcl = x.numpy(), x.contiguous(memory_format=torch.channels_last)
        best = {"runtime": float("inf"), "nchw": float("inf"), "cl": float("inf")}
        with torch.no_grad():
            rt(xn), twin(x), twin_cl(xcl)  # warm up
            for _ in range(args.rounds):
                best["runtime"] = min(best["runtime"], best_of(rt, xn, repeats))
                best["nchw"] = min(best["nchw"], best_of(twin, x, repeats))
                best["cl"] = min(best["cl"], best_of(twin_cl, xcl, repeats))
        torch_best = min(best["nchw"], best["cl"])
        print(
            f"  batch {batch:3d}: runtime {best['runtime'] * 1e3:8.3f} ms "
            f"({best['runtime'] * 1e3 / batch:.4f} ms/image), PyTorch {torch_best * 1e3:8.3f} ms "
            f"(NCHW {best['nchw'] * 1e3:.3f}, channels-last {best['cl'] * 1e3:.3f}): "
            f"{torch_best / best['runtime']:.2f}x"
        )
        assert np.isfinite(rt(xn)).all()
    rt.close()  # with --profile: the runtime prints its profile here


if __name__ == "__main__":
    main()
