"""Stale BatchNorm statistics in 1-bit training: inherent, or onebit's own?

Trains the Fashion-MNIST ReCU ResNet-20 recipe (SGD 0.1, momentum 0.9, wd 1e-4, batch 128,
cosine to 0, tau 0.85 -> 0.99, crop + flip) twice with the same seed, and after every epoch
evaluates each model on the test set twice: with its stored running statistics (the EMA of
training, momentum 0.1) and with statistics re-estimated from ``--batches`` training batches
(:func:`onebit.train.bn.recalibrate_bn`):

* official-style: ReCU's own code written out in ``train_speed.py`` (``BinarizeConv2d`` with
  ``.item()``, ``BasicBlock``, per-sample crop/flip in a DataLoader, CosineAnnealingLR
  stepped per epoch, tau set per epoch), eager;
* onebit: ``onebit.train.Trainer`` on ``configs/fmnist/resnet20_recu.yaml`` (eager on the
  CPU), with ``eval.bn_recalibrate``, which records both figures.

A collapse of the stored-statistics figure in both columns says the effect is inherent to
the recipe; in onebit's alone, that onebit causes it.

    OMP_NUM_THREADS=1 python benchmarks/bn_staleness.py --epochs 6
    python benchmarks/bn_staleness.py --epochs 2 --subset 6400       # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from onebit.config import load_config
from onebit.data import build_loaders
from onebit.quant import tau_schedule
from onebit.train import RunDir, Trainer, evaluate
from onebit.train.bn import recalibrate_bn
from train_speed import CpuCifar, OfficialResNet20

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "fmnist" / "resnet20_recu.yaml"


def official_curve(args: argparse.Namespace, loaders) -> list[tuple[float, float]]:
    """(stored, recalibrated) test top-1 after each epoch of the official-style loop."""
    torch.manual_seed(args.seed)
    images = loaders.train.images[: args.subset].cpu()
    labels = loaders.train.labels[: args.subset].cpu()
    model = OfficialResNet20(in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    loader = DataLoader(CpuCifar(images, labels), batch_size=128, shuffle=True, drop_last=True)
    criterion = nn.CrossEntropyLoss()
    curve = []
    for epoch in range(args.epochs):
        tau = tau_schedule(epoch, args.epochs, 0.85, 0.99)
        for m in model.modules():
            if hasattr(m, "tau"):
                m.tau.fill_(tau)
        model.train()
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        stored = evaluate(model, loaders.eval)["val_top1"]
        twin = copy.deepcopy(model)
        recalibrate_bn(twin, loaders.train.batches(epoch, augment=False), args.batches)
        curve.append((stored, evaluate(twin, loaders.eval)["val_top1"]))
        print(
            f"official-style epoch {epoch + 1}: stored {stored:.2f}%, "
            f"recalibrated {curve[-1][1]:.2f}%",
            flush=True,
        )
    return curve


def onebit_curve(args: argparse.Namespace) -> list[tuple[float, float]]:
    """(stored, recalibrated) test top-1 after each epoch of onebit's trainer."""
    overrides = [
        f"schedule.epochs={args.epochs}",
        f"data.subset={args.subset}",
        f"eval.bn_recalibrate={args.batches}",
        f"runtime.seed={args.seed}",
        "runtime.device=cpu",
        "runtime.compile=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(load_config(RECIPE, overrides), RunDir(Path(tmp) / "run")).fit()
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["val_top1_stored"], r["val_top1"]) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each run (the schedule)")
    parser.add_argument("--subset", type=int, default=60_000, help="training images per epoch")
    parser.add_argument("--batches", type=int, default=50, help="recalibration batches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.epochs, args.subset, args.batches) < 1:
        parser.error("--epochs, --subset and --batches must be positive")
    config = load_config(RECIPE, [f"data.subset={args.subset}", "runtime.device=cpu"])
    loaders = build_loaders(config.data, torch.device("cpu"), args.seed)
    official = official_curve(args, loaders)
    ours = onebit_curve(args)
    print(
        f"\nFashion-MNIST ReCU ResNet-20, {args.epochs} epochs of {args.subset} images, seed "
        f"{args.seed}; test top-1 (%) with stored / re-estimated ({args.batches} batches) "
        "BatchNorm statistics"
    )
    print(
        "| epoch | official-style stored | official-style recal. | onebit stored | onebit recal. |"
    )
    print("|--:|--:|--:|--:|--:|")
    for epoch, ((a, b), (c, d)) in enumerate(zip(official, ours, strict=True), 1):
        print(f"| {epoch} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} |")
    worst = [max(0.0, r - s) for s, r in official], [max(0.0, r - s) for s, r in ours]
    print(
        f"largest stored-statistics deficit: official-style {max(worst[0]):.2f} pt, "
        f"onebit {max(worst[1]):.2f} pt"
    )


if __name__ == "__main__":
    main()
