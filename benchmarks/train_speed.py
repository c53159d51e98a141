"""Seconds per epoch of the CIFAR ResNet-20 1W/1A ReCU recipe: onebit's trainer against an
eager re-implementation of the official ReCU training step, in one process.

Both train ResNet-20 (ReCU quantizers, batch 128, SGD 0.1 momentum 0.9, wd 1e-4, tau 0.85) on
synthetic CIFAR-shaped data (50,000 random uint8 images, 10 classes) with random crop (pad 4)
and flip. Each measures ``--steps`` steps after ``--warmup`` steps and extrapolates to one
epoch (50,000 // batch steps).

* onebit: ``onebit.train.Trainer.train_epoch`` over a :class:`onebit.data.DeviceLoader` (data
  on the device, batched augmentation, metrics read once per log interval); bf16 autocast and
  torch.compile on CUDA (runtime.compile auto), fp32 eager on CPU.
* official-style: z-hXu/ReCU ``cifar/main.py`` + ``modules/binarized_modules.py`` written out
  here: ``BinarizeConv2d`` takes Q with ``.item()`` (a host sync per layer per step), a
  DataLoader over CPU tensors with per-sample crop/flip/normalise (torchvision-free, same
  operations), ``loss.item()``, top-1 and top-5 ``.item()`` every step, fp32.

The two run in alternating rounds (official, onebit, official, ...) and each reports the
median seconds per step of its rounds, so a change in machine load hits both alike.

    python benchmarks/train_speed.py                       # GPU if there is one
    python benchmarks/train_speed.py --device cpu --steps 20 --warmup 2 --rounds 4

``--imagenet``: images/s of training the ImageNet binary networks (resnet18 with IR-Net,
birealnet18, reactnet_a; ``--models``) at 224x224, batch 256, against the same network with
``method="fp"`` (32w32a), in alternating rounds in the same process; the goal is binary >= 0.8x
the FP twin. Both go through ``Trainer.train_epoch`` on synthetic uint8 images on the device
(no augmentation), SGD (momentum 0.9, wd 1e-4), bf16 autocast + torch.compile on CUDA (fp32
eager on CPU unless ``--compile on``). ``--profile`` adds a torch.profiler table of the
binary and the FP step per model (self time by operator); ``--explain`` counts the graph
breaks torch._dynamo finds in each binary model's forward (0: one graph per model).

    python benchmarks/train_speed.py --imagenet            # on a GPU: batch 256
    python benchmarks/train_speed.py --imagenet --device cpu --batch-size 8 --steps 4 \\
        --warmup 1 --rounds 2 --profile --explain
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from onebit.config import config_from_dict, load_config
from onebit.data import DeviceLoader, Loaders, Normalize
from onebit.train import Trainer, apply_quant_schedule, resolve_device

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cifar10" / "resnet20_recu.yaml"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TAU = 0.85  # tau of epoch 0 in the recipe


# --------------------------------------------------------------------------- official-style


class OfficialBinarizeConv2d(nn.Conv2d):
    """ReCU's ``BinarizeConv2d`` as in the official code, ``.item()`` included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.weight.size(0), 1, 1))
        self.register_buffer("tau", torch.tensor(TAU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w0 = w - w.mean([1, 2, 3], keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))
        q = (-w1.abs().mean() * torch.log(2 - 2 * self.tau)).detach().cpu().item()
        w2 = torch.clamp(w1, -q, q)
        a0 = x / torch.sqrt(x.var([1, 2, 3], keepdim=True) + 1e-5) if self.training else x
        bw = _SignIdentity.apply(w2)
        ba = _SignApprox.apply(a0)
        out = F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return out * self.alpha


class _SignIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g.clone()


class _SignApprox(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (2 - torch.abs(2 * x)).clamp(min=0) * g.clone()


class OfficialBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = OfficialBinarizeConv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = OfficialBinarizeConv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.pad is not None:
            shortcut = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, self.pad, self.pad))
        out = F.hardtanh(self.bn1(self.conv1(x)) + shortcut)
        return F.hardtanh(self.bn2(self.conv2(out)) + out)


class OfficialResNet20(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                blocks.append(OfficialBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.hardtanh(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, out.size(3)).flatten(1)
        return self.linear(self.bn2(out))


class CpuCifar(Dataset):
    """Per-sample RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = F.pad(self.images[i], (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,)).tolist()
        x = x[:, top : top + 32, left : left + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return (x.float() / 255 - self.mean) / self.std, self.labels[i]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[torch.Tensor]:
    pred = output.topk(max(topk), 1).indices.t()
    correct = pred.eq(target.view(1, -1))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


def official_runner(images, labels, device, batch, workers) -> Callable[[int], float]:
    """``run(k)``: train k steps of the official-style loop, return the seconds they took."""
    model = OfficialResNet20().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(
        CpuCifar(images, labels),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    batches = iter(loader)
    meters = [0.0, 0.0, 0.0]
    model.train()

    def run(k: int) -> float:
        nonlocal batches
        _sync(device)
        start = time.perf_counter()
        for _ in range(k):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            output = model(x)
            loss = criterion(output, y)
            prec1, prec5 = accuracy(output.data, y)
            meters[0] += loss.item()
            meters[1] += prec1.item()
            meters[2] += prec5.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- onebit


def onebit_runner(images, labels, device, batch) -> Callable[[int], float]:
    """``run(k)``: train k steps with onebit's trainer, return the seconds they took."""
    config = load_config(CONFIG, [f"data.batch_size={batch}", f"runtime.device={device}"])
    normalize = Normalize(MEAN, STD, device)
    train = DeviceLoader(
        images.to(device), labels.to(device), batch, normalize, train=True, augment="crop_flip"
    )
    trainer = Trainer(config, loaders=Loaders(train, train, 10, (3, 32, 32)))
    apply_quant_schedule(trainer.model, config.quant, 0, config.schedule.epochs)
    # train_epoch ends with a host read of its metrics, so its clock includes the device work
    return lambda k: trainer.train_epoch(0, max_steps=k)["seconds"]


# --------------------------------------------------------------------------- ImageNet shapes

IMAGENET_MODELS = {"resnet18": "irnet", "birealnet18": "bireal", "reactnet_a": "reactnet"}


def imagenet_runner(
    name: str, method: str, images: torch.Tensor, labels: torch.Tensor, batch: int, compile_: str
) -> tuple[Trainer, Callable[[int], float]]:
    """The trainer of ``name`` with ``method`` (fp: 32w32a) and ``run(k)`` as in
    :func:`onebit_runner`, over ``images`` already on the device."""
    device = images.device
    bits = "32w32a" if method == "fp" else "1w1a"
    config = config_from_dict(
        {
            "model": {"name": name, "method": method, "bits": bits, "num_classes": 1000},
            "data": {"batch_size": batch},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "runtime": {
                "device": str(device),
                "compile": {"auto": "auto", "on": True, "off": False}[compile_],
            },
        }
    )
    normalize = Normalize(MEAN, STD, device)
    train = DeviceLoader(images, labels, batch, normalize, train=True, augment="none")
    trainer = Trainer(config, loaders=Loaders(train, train, 1000, (3, 224, 224)))
    apply_quant_schedule(trainer.model, config.quant, 0, config.schedule.epochs)
    return trainer, lambda k: trainer.train_epoch(0, max_steps=k)["seconds"]


def profile_table(trainer: Trainer, steps: int, rows: int = 12) -> str:
    """Operators of ``steps`` training steps by self time (torch.profiler; CUDA time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        trainer.train_epoch(0, max_steps=steps)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def graph_breaks(model: nn.Module, device: torch.device) -> str:
    """What torch._dynamo.explain finds in ``model``'s forward on a 2x3x224x224 batch."""
    import torch._dynamo as dynamo

    explained = dynamo.explain(model)(torch.randn(2, 3, 224, 224, device=device))
    reasons = "; ".join(b.reason.splitlines()[0] for b in explained.break_reasons[:3])
    return f"{explained.graph_count} graph(s), {explained.graph_break_count} break(s) {reasons}"


def imagenet_main(args: argparse.Namespace, device: torch.device) -> None:
    batch = args.batch_size or 256
    chunk = -(-args.steps // args.rounds)
    n = batch * max(chunk, args.warmup)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 1000, (n,), generator=g).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    print(
        f"ImageNet shapes: 3x224x224, batch {batch}, synthetic data on the device; {name}, "
        f"{torch.get_num_threads()} threads; {'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
        f", compile {'on' if compiled else 'off'}; median of {args.rounds} alternating rounds "
        f"of {chunk} steps, after {args.warmup}"
    )
    results, details = [], []
    for model in args.models.split(","):
        method = IMAGENET_MODELS[model]
        torch.manual_seed(0)
        runners = {
            m: imagenet_runner(model, m, images, labels, batch, args.compile)
            for m in (method, "fp")
        }
        for _, run in runners.values():
            run(args.warmup)
        per_step: dict[str, list[float]] = {m: [] for m in runners}
        for _ in range(args.rounds):
            for m, (_, run) in runners.items():
                per_step[m].append(run(chunk) / chunk)
        binary, fp = (statistics.median(per_step[m]) for m in (method, "fp"))
        results.append((model, method, batch / binary, batch / fp))
        if args.explain:
            found = graph_breaks(runners[method][0].model, device)
            details.append(f"{model} ({method}) forward under torch._dynamo.explain: {found}")
        if args.profile:
            for m, (trainer, _) in runners.items():
                details.append(f"{model} {m}, {chunk} steps:\n{profile_table(trainer, chunk)}")
        del runners
    print(f"| {'network':<12} | {'method':<8} | {'binary img/s':>12} | {'FP img/s':>9} | ratio |")
    print(f"|{'-' * 14}|{'-' * 10}|{'-' * 14}|{'-' * 11}|{'-' * 7}|")
    for model, method, binary, fp in results:
        print(f"| {model:<12} | {method:<8} | {binary:12.1f} | {fp:9.1f} | {binary / fp:5.2f} |")
    print("ratio = binary img/s / FP img/s (goal >= 0.8)")
    for text in details:
        print("\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--batch-size", type=int, help="the recipe's 128 (--imagenet: 256, the papers')"
    )
    parser.add_argument("--steps", type=int, default=100, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds")
    parser.add_argument(
        "--imagenet", action="store_true", help="ImageNet networks at 224x224, binary vs FP"
    )
    parser.add_argument(
        "--models",
        default=",".join(IMAGENET_MODELS),
        help=f"--imagenet: comma-separated networks (default {','.join(IMAGENET_MODELS)})",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="--imagenet: torch.compile (auto: on CUDA only)",
    )
    parser.add_argument("--profile", action="store_true", help="--imagenet: operator table")
    parser.add_argument("--explain", action="store_true", help="--imagenet: graph breaks")
    parser.add_argument(
        "--workers",
        type=int,
        help="official-style DataLoader workers (default: 8 on CUDA, "
        "the official default; 0 on CPU, where workers would take the training cores)",
    )
    args = parser.parse_args()
    if min(args.steps, args.warmup, args.rounds) < 1:
        parser.error("--steps, --warmup and --rounds must be at least 1")
    device = resolve_device(args.device)
    if args.imagenet:
        unknown = [m for m in args.models.split(",") if m not in IMAGENET_MODELS]
        if unknown:
            parser.error(f"--models: {unknown[0]!r} is not one of {', '.join(IMAGENET_MODELS)}")
        imagenet_main(args, device)
        return
    args.batch_size = args.batch_size or 128
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    n = 50_000
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    steps_per_epoch = n // args.batch_size

    torch.manual_seed(0)
    runners = {
        "official": official_runner(images, labels, device, args.batch_size, workers),
        "onebit": onebit_runner(images, labels, device, args.batch_size),
    }
    for run in runners.values():
        run(args.warmup)
    # Alternate rounds so that both see the same machine load; report each one's median.
    per_step: dict[str, list[float]] = {name: [] for name in runners}
    chunk = -(-args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, run in runners.items():
            per_step[name].append(run(chunk) / chunk)
    official, onebit_step = (statistics.median(per_step[n]) for n in ("official", "onebit"))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"ResNet-20 1W/1A ReCU, CIFAR-shaped synthetic data, batch {args.batch_size}, "
        f"{steps_per_epoch} steps/epoch; {name}, {torch.get_num_threads()} threads; "
        f"median of {args.rounds} alternating rounds of {chunk} steps, after {args.warmup}"
    )
    print(f"| {'implementation':<40} | {'s/step':>8} | {'s/epoch':>8} | {'img/s':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for label, per_step in (
        (f"official-style eager (workers={workers})", official),
        ("onebit Trainer", onebit_step),
    ):
        print(
            f"| {label:<40} | {per_step:8.4f} | {per_step * steps_per_epoch:8.1f} | "
            f"{args.batch_size / per_step:7.0f} |"
        )
    print(f"speed-up (official-style s/epoch / onebit s/epoch): {official / onebit_step:.2f}x")


if __name__ == "__main__":
    main()
