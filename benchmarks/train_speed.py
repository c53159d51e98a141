"""Training speed of ResNet-20 on the CPU or a GPU: onebit's 1-bit recipe, its FP twin, a bare
PyTorch loop and an eager re-implementation of the official ReCU step, in one process.

All four train ResNet-20 (batch 128, SGD 0.1 momentum 0.9, wd 1e-4) on synthetic
Fashion-MNIST-shaped data (60,000 random uint8 images 1x32x32, 10 classes; ``--in-chans 3``:
CIFAR-shaped), each measuring ``--steps`` steps after ``--warmup`` steps, extrapolated to
one epoch:

* onebit METHOD: ``Trainer.train_epoch`` of ``configs/fmnist/resnet20_recu.yaml`` with
  ``model.method=METHOD`` (``--method``, default recu; ``ste`` is Larq's binary model:
  ste_sign activations, clipped-STE weights) over a :class:`onebit.data.DeviceLoader` (data
  on the device, batched crop + flip, metrics read once per log interval).
* onebit fp: the same through ``configs/fmnist/resnet20_fp.yaml`` (the FP twin).
* bare PyTorch fp: the same FP ResNet-20 written here in plain ``torch.nn`` and a three-line
  loop over pre-normalised batches (no augmentation, no metrics): the floor a framework
  cannot beat.
* official-style recu: z-hXu/ReCU ``cifar/main.py`` + ``modules/binarized_modules.py``
  written out here: ``BinarizeConv2d`` takes Q with ``.item()`` (a host sync per layer per
  step), a DataLoader over CPU tensors with per-sample crop/flip/normalise (torchvision-free,
  same operations), ``loss.item()``, top-1 and top-5 ``.item()`` every step, fp32.

``--compile on|off|auto`` applies to the onebit rows (auto: the trainer's own choice for a
one-epoch run). The four run in alternating rounds and each reports the median seconds per
step of its rounds, so a change in machine load hits all alike. Time with one thread when
anything else runs (``OMP_NUM_THREADS=1``): a two-thread PyTorch job beside another stalls.

    python benchmarks/train_speed.py                       # GPU if there is one
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --device cpu --steps 20 --warmup 3

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

``--fused``: the fused CPU passes (onebit.quant.fused: binarizers, RPReLU) against PyTorch's
operators, per network (``--nets NAME:METHOD[:BITS]``, default FIRNet-20 ReActNet in its
two-step recipe's first and second step, FIRNet-20 ReCU, ReCU ResNet-20), the same trainer
switched between the two in alternating rounds, Fashion-MNIST shapes, batch 128, Adam:

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --fused --device cpu --steps 20 \\
        --warmup 2 --rounds 4

``--exact-conv``: the same comparison for the binary convolutions' bfloat16 forward with
float32's result (onebit.nn.exact_conv; CPUs with AVX512-BF16 or AMX) against PyTorch's
float32 convolution.

``--bn-act``: the same comparison for the blocks' BatchNorm + shortcut + activation in two
fused passes each way (onebit.nn.bn_act) against PyTorch's modules one by one (``--fused``
switches these too, with the binarizers' passes):

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --bn-act --device cpu --steps 20 \\
        --warmup 2 --rounds 4 --nets resnet20:recu,resnet20:fp,resnet20:reactnet,firnet20:recu

``--compile-teacher``: the distillation recipes (``--configs``, default the two-step best
recipes of ResNet-20 and FIRNet-20, their first step) with ``runtime.compile_teacher`` true
against false, two trainers in alternating rounds; each teacher is its config's FP model with
fresh weights (the speed does not depend on them):

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --compile-teacher --device cpu \\
        --steps 12 --warmup 2 --rounds 3
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
from onebit.data import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, Loaders, Normalize
from onebit.machine import cpu_name
from onebit.nn import bn_act, exact_conv
from onebit.quant import fused
from onebit.train import Trainer, apply_quant_schedule, resolve_device

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "fmnist"
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's; the same for every channel
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


class Block(nn.Module):
    """A ResNet-20 block written out: ``binary``: ReCU's official ``BasicBlock`` (binary
    convs, a shortcut after every conv, hardtanh); else onebit's FP twin's (conv-BN-ReLU-
    conv-BN + shortcut, ReLU). The downsampling shortcut is AvgPool2d(2) + zero channels."""

    def __init__(self, cin: int, cout: int, stride: int, binary: bool):
        super().__init__()
        conv = OfficialBinarizeConv2d if binary else nn.Conv2d
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None
        self.binary = binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.pad is not None:
            shortcut = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, self.pad, self.pad))
        if self.binary:
            out = F.hardtanh(self.bn1(self.conv1(x)) + shortcut)
            return F.hardtanh(self.bn2(self.conv2(out)) + out)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


def blocks(binary: bool) -> list[nn.Module]:
    """ResNet-20's nine blocks, 16-32-64 channels."""
    layers, cin = [], 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(3):
            layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1, binary))
            cin = width
    return layers


class OfficialResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layers = nn.Sequential(*blocks(binary=True))
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
        self.mean, self.std = torch.tensor(MEAN[0]), torch.tensor(STD[0])

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


def _autocast(device: torch.device, precision: str):
    """bf16 autocast for the rows outside onebit when ``--precision bf16``."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")


def official_runner(
    images, labels, device, batch, workers, precision="auto"
) -> Callable[[int], float]:
    """``run(k)``: train k steps of the official-style loop, return the seconds they took."""
    model = OfficialResNet20(in_chans=images.shape[1]).to(device)
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
            with _autocast(device, precision):
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


def onebit_runner(
    images, labels, device, batch, method, compile_, precision="auto"
) -> Callable[[int], float]:
    """``run(k)``: train k steps with onebit's trainer, return the seconds they took."""
    overrides = [f"data.batch_size={batch}", f"runtime.device={device}", "schedule.epochs=1"]
    if compile_ != "auto":
        overrides.append(f"runtime.compile={compile_ == 'on'}")
    if precision != "auto":
        overrides += [f"runtime.precision={precision}", f"runtime.cpu_precision={precision}"]
    if method == "fp":
        config = load_config(CONFIGS / "resnet20_fp.yaml", overrides)
    else:
        overrides += [f"model.method={method}", f"model.in_chans={images.shape[1]}"]
        config = load_config(CONFIGS / "resnet20_recu.yaml", overrides)
    config.model["in_chans"] = images.shape[1]
    normalize = Normalize(MEAN * images.shape[1], STD * images.shape[1], device)
    images, labels = images.to(device), labels.to(device)
    return trainer_runner(config, images, labels, batch, normalize, "crop_flip", 10)[1]


def trainer_runner(config, images, labels, batch, normalize, augment, num_classes):
    """(trainer, ``run(k)``): the Trainer of ``config`` over ``images`` already on the device,
    its quantizer schedule at epoch 0; ``run(k)`` trains k steps and returns their seconds."""
    train = DeviceLoader(images, labels, batch, normalize, train=True, augment=augment)
    loaders = Loaders(train, train, num_classes, tuple(images.shape[1:]))
    trainer = Trainer(config, loaders=loaders)
    apply_quant_schedule(trainer.model, config.quant, 0, config.schedule.epochs)
    # train_epoch ends with a host read of its metrics, so its clock includes the device work
    return trainer, lambda k: trainer.train_epoch(0, max_steps=k)["seconds"]


def bare_runner(images, labels, device, batch, precision="auto") -> Callable[[int], float]:
    """``run(k)``: k steps of a hand-written FP ResNet-20 over pre-normalised batches."""
    model = nn.Sequential(
        nn.Conv2d(images.shape[1], 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        *blocks(binary=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(64),
        nn.Linear(64, 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    x_all = ((images.float() / 255 - MEAN[0]) / STD[0]).to(device)
    y_all = labels.to(device)
    position = 0

    def run(k: int) -> float:
        nonlocal position
        _sync(device)
        start = time.perf_counter()
        for _ in range(k):
            if position + batch > len(y_all):
                position = 0
            x, y = x_all[position : position + batch], y_all[position : position + batch]
            position += batch
            with _autocast(device, precision):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    return run


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
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, device)
    return trainer_runner(config, images, labels, batch, normalize, "none", 1000)


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


# --------------------------------------------------------------------------- fused CPU passes

FUSED_NETS = "firnet20:reactnet:32w1a,firnet20:reactnet,firnet20:recu,resnet20:recu"


def fused_runner(spec: str, images: torch.Tensor, labels: torch.Tensor, batch: int):
    """(trainer, ``run(k)``) of :func:`trainer_runner` for ``NAME:METHOD[:BITS]`` (bits
    default 1w1a)."""
    name, method, *bits = spec.split(":")
    config = config_from_dict(
        {
            "model": {
                "name": name,
                "method": method,
                "bits": bits[0] if bits else "1w1a",
                "num_classes": 10,
                "in_chans": images.shape[1],
            },
            "data": {"batch_size": batch},
            "optim": {"name": "adam", "lr": 1e-3},
            "runtime": {"device": "cpu", "compile": False},
        }
    )
    normalize = Normalize(MEAN * images.shape[1], STD * images.shape[1], images.device)
    return trainer_runner(config, images, labels, batch, normalize, "crop_flip", 10)


def eval_seconds(model: nn.Module, batch: torch.Tensor) -> float:
    """Seconds of one eval-mode forward of ``batch`` without autograd (as evaluation runs)."""
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            model(batch)
            return time.perf_counter() - start
    finally:
        model.train()


# what --fused and --exact-conv switch: (module with ``enabled``, what it is, what it replaces)
SWITCHES = {
    "fused": (fused, "fused CPU passes", "PyTorch's operators"),
    "exact_conv": (exact_conv, "exact bf16 binary convolutions", "PyTorch's fp32 convolutions"),
    "bn_act": (bn_act, "fused BatchNorm + shortcut + activation", "PyTorch's modules"),
}


def synthetic_rounds(args: argparse.Namespace) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(batch, steps per round, images, labels): random uint8 ``--in-chans``x32x32 images
    and labels, enough for two runs of the warm-up or a round."""
    batch = args.batch_size or 128
    chunk = -(-args.steps // args.rounds)
    n = batch * max(chunk, args.warmup) * 2
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, args.in_chans, 32, 32), dtype=torch.uint8, generator=g)
    return batch, chunk, images, torch.randint(0, 10, (n,), generator=g)


def switch_main(args: argparse.Namespace, switch: str) -> None:
    """img/s with ``switch``'s module enabled and disabled, per network of ``--nets``."""
    module, on_name, off_name = SWITCHES[switch]
    if fused._fused is None:
        raise SystemExit("the fused kernels are not built: pip install -e . with a C compiler")
    if switch == "exact_conv" and not exact_conv._hardware():
        print(f"note: {cpu_name()} has no AVX512-BF16/AMX: both columns run fp32 convolutions")
    batch, chunk, images, labels = synthetic_rounds(args)
    print(
        f"{on_name} on / off, synthetic {args.in_chans}x32x32 data, batch {batch}, Adam, "
        f"eager fp32; {cpu_name()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; median of {args.rounds} alternating rounds of {chunk} steps, "
        f"after {args.warmup}"
    )
    rows = []
    for spec in args.nets.split(","):
        torch.manual_seed(0)
        trainer, run = fused_runner(spec, images, labels, batch)
        forward = torch.randn(batch, args.in_chans, 32, 32)
        per_step: dict[bool, list[float]] = {True: [], False: []}
        per_eval: dict[bool, list[float]] = {True: [], False: []}
        try:
            for on in (True, False):
                module.enabled = on
                run(args.warmup)
                eval_seconds(trainer.model, forward)
            for _ in range(args.rounds):
                for on in (True, False):
                    module.enabled = on
                    per_step[on].append(run(chunk) / chunk)
                    per_eval[on].append(eval_seconds(trainer.model, forward))
        finally:
            module.enabled = True
        train = [batch / statistics.median(per_step[k]) for k in (True, False)]
        evals = [batch / statistics.median(per_eval[k]) for k in (True, False)]
        rows.append((spec, *train, *evals))
    print(
        f"| {'network:method[:bits]':<28} | train on img/s | train off img/s | ratio "
        "| eval on img/s | eval off img/s | ratio |"
    )
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 17}|{'-' * 7}|{'-' * 15}|{'-' * 16}|{'-' * 7}|")
    for spec, on, off, e_on, e_off in rows:
        print(
            f"| {spec:<28} | {on:14.1f} | {off:15.1f} | {on / off:5.2f} "
            f"| {e_on:13.1f} | {e_off:14.1f} | {e_on / e_off:5.2f} |"
        )
    print(
        f"ratio = img/s with the {on_name} (on) / img/s with {off_name} (off); train: a "
        "training step, eval: an eval-mode forward without autograd"
    )


TEACHER_CONFIGS = "configs/fmnist/resnet20_best.yaml,configs/fmnist/firnet20_best.yaml"


def teacher_main(args: argparse.Namespace) -> None:
    """img/s of distillation recipes with the teacher compiled and eager."""
    import tempfile

    from safetensors.torch import save_file

    from onebit.models import create_model

    batch, chunk, images, labels = synthetic_rounds(args)
    normalize = Normalize(MEAN * args.in_chans, STD * args.in_chans, images.device)
    print(
        f"distillation with the teacher compiled / eager, synthetic {args.in_chans}x32x32 data, "
        f"batch {batch}, eager student; {cpu_name()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; median of {args.rounds} alternating rounds of {chunk} steps, "
        f"after {args.warmup} (compiling excluded)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.configs.split(","):
            spec = load_config(path).distill.teacher.model
            teacher = Path(tmp) / f"{Path(path).stem}_teacher.safetensors"
            model = create_model(**spec, num_classes=10, in_chans=args.in_chans)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, teacher)
            runs = {}
            for setting in (True, False):
                config = load_config(
                    path,
                    [
                        f"distill.teacher.checkpoint={teacher}",
                        f"model.in_chans={args.in_chans}",
                        "runtime.device=cpu",
                        f"runtime.compile_teacher={setting}",
                        f"data.batch_size={batch}",
                    ],
                )
                torch.manual_seed(0)
                runs[setting] = trainer_runner(
                    config, images, labels, batch, normalize, "crop_flip", 10
                )[1]
                runs[setting](args.warmup)  # the compiled teacher compiles here
            per_step: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.rounds):
                for setting, run in runs.items():
                    per_step[setting].append(run(chunk) / chunk)
            on, off = (batch / statistics.median(per_step[k]) for k in (True, False))
            rows.append((path, on, off))
    print(f"| {'config':<40} | compiled img/s | eager img/s | ratio |")
    print(f"|{'-' * 42}|{'-' * 16}|{'-' * 13}|{'-' * 7}|")
    for path, on, off in rows:
        print(f"| {path:<40} | {on:14.1f} | {off:11.1f} | {on / off:5.2f} |")
    print("ratio = img/s with runtime.compile_teacher=true / with false (the student eager)")


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
        help="torch.compile of the onebit rows (auto: the trainer's choice; --imagenet: CUDA)",
    )
    parser.add_argument("--method", default="recu", help="the binary row's model.method")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: onebit's defaults (bf16 autocast on CUDA, fp32 on the CPU; the other rows "
        "fp32); fp32 or bf16: every row in that precision",
    )
    parser.add_argument(
        "--larq",
        metavar="PYTHON",
        help="also run benchmarks/larq_speed.py with this interpreter (make larq-venv: "
        ".venv-larq/bin/python) and add its rows",
    )
    parser.add_argument(
        "--in-chans", type=int, default=1, choices=(1, 3), help="1: Fashion-MNIST; 3: CIFAR"
    )
    parser.add_argument(
        "--fused", action="store_true", help="the fused CPU passes on vs off, per network"
    )
    parser.add_argument(
        "--exact-conv",
        action="store_true",
        help="the exact bf16 binary convolutions on vs off, per network",
    )
    parser.add_argument(
        "--bn-act",
        action="store_true",
        help="the fused BatchNorm + shortcut + activation on vs off, per network",
    )
    parser.add_argument(
        "--compile-teacher",
        action="store_true",
        help="distillation recipes with the teacher compiled vs eager",
    )
    parser.add_argument(
        "--configs",
        default=TEACHER_CONFIGS,
        help=f"--compile-teacher: distillation configs ({TEACHER_CONFIGS})",
    )
    parser.add_argument(
        "--nets",
        default=FUSED_NETS,
        help=f"--fused, --exact-conv, --bn-act: NAME:METHOD[:BITS],... ({FUSED_NETS})",
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
    if args.compile_teacher:
        if device.type != "cpu":
            parser.error("--compile-teacher times CPU steps: add --device cpu")
        teacher_main(args)
        return
    switches = [name for name in SWITCHES if getattr(args, name)]
    if switches:
        if device.type != "cpu" or len(switches) > 1:
            parser.error(
                "--fused, --exact-conv and --bn-act time CPU passes: one, with --device cpu"
            )
        switch_main(args, switches[0])
        return
    if args.imagenet:
        unknown = [m for m in args.models.split(",") if m not in IMAGENET_MODELS]
        if unknown:
            parser.error(f"--models: {unknown[0]!r} is not one of {', '.join(IMAGENET_MODELS)}")
        imagenet_main(args, device)
        return
    args.batch_size = args.batch_size or 128
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    n = 60_000
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, args.in_chans, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    steps_per_epoch = n // args.batch_size

    torch.manual_seed(0)
    batch, method, precision = args.batch_size, args.method, args.precision
    runners = {
        f"onebit {method}": onebit_runner(
            images, labels, device, batch, method, args.compile, precision
        ),
        "onebit fp": onebit_runner(images, labels, device, batch, "fp", args.compile, precision),
        "bare PyTorch fp": bare_runner(images, labels, device, batch, precision),
        f"official-style recu (workers={workers})": official_runner(
            images, labels, device, batch, workers, precision
        ),
    }
    for run in runners.values():
        run(args.warmup)
    # Alternate rounds so that all see the same machine load; report each one's median.
    per_step: dict[str, list[float]] = {name: [] for name in runners}
    chunk = -(-args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, run in runners.items():
            per_step[name].append(run(chunk) / chunk)
    median = {name: statistics.median(times) for name, times in per_step.items()}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"ResNet-20, synthetic {args.in_chans}x32x32 data, batch {batch}, {steps_per_epoch} "
        f"steps/epoch; {where}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"compile {args.compile}, precision {precision}; median of {args.rounds} alternating "
        f"rounds of {chunk} steps, "
        f"after {args.warmup}"
    )
    print(f"| {'implementation':<40} | {'s/step':>8} | {'s/epoch':>8} | {'img/s':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for label, step in median.items():
        print(
            f"| {label:<40} | {step:8.4f} | {step * steps_per_epoch:8.1f} | {batch / step:7.0f} |"
        )
    larq = larq_rows(args.larq, args) if args.larq else {}
    for label, images_per_s in larq.items():
        print(
            f"| {label:<40} | {batch / images_per_s:8.4f} | "
            f"{batch / images_per_s * steps_per_epoch:8.1f} | {images_per_s:7.0f} |"
        )
    binary, fp, bare, official = median.values()
    print(f"onebit {method} / onebit fp (img/s): {fp / binary:.2f}x")
    print(f"onebit fp / bare PyTorch fp (img/s): {bare / fp:.2f}x")
    print(f"onebit {method} / official-style recu (img/s): {official / binary:.2f}x")
    if larq:
        larq_binary, larq_fp = larq.values()
        print(f"onebit {method} / larq ste binary (img/s): {batch / binary / larq_binary:.2f}x")
        print(f"onebit fp / larq fp (img/s): {batch / fp / larq_fp:.2f}x")


def larq_rows(python: str, args: argparse.Namespace) -> dict[str, float]:
    """{row label: img/s} of benchmarks/larq_speed.py run by ``python`` (its own venv) with
    this run's thread count, right after the PyTorch rounds."""
    import re
    import subprocess

    script = Path(__file__).resolve().parent / "larq_speed.py"
    command = [python, str(script), "--threads", str(torch.get_num_threads())]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--rounds", str(args.rounds), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"larq_speed.py failed:\n{done.stderr[-2000:]}")
    rows = re.findall(r"^\| (larq [^|]+?)\s+\|[^|]+\|[^|]+\|\s+(\d+) \|$", done.stdout, re.M)
    return {f"{label} ({done.stdout.split(',')[0]})": float(speed) for label, speed in rows}


if __name__ == "__main__":
    main()
