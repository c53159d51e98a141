"""Multi-process training: each process's part of every batch, the run directory of the
processes other than 0, and real 2-process DistributedDataParallel runs (gloo, CPU)."""

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from safetensors.torch import load_file, save_file

from conftest import write_cifar, write_image_folder
from onebit.cli import main
from onebit.config import config_from_dict, load_config
from onebit.data import DataConfig, DeviceLoader, Normalize, build_loaders
from onebit.data.gpu_loader import batch_bounds
from onebit.errors import ConfigError
from onebit.models import register_model
from onebit.train import RunDir, Trainer, distributed, evaluate, load_model
from onebit.train.distributed import process_group
from onebit.train.trainer import NullRunDir

ROOT = Path(__file__).resolve().parent.parent
RECU = ROOT / "configs/cifar10/resnet20_recu.yaml"
CPU = torch.device("cpu")
# A generated CIFAR-10 (65 training, 13 test images): 2 steps of 16 (8 per process) per epoch;
# the last evaluation batch of 4 has one image, so process 1 has one evaluation batch fewer.
TINY = {
    "data.checksum": False,
    "data.subset": 32,
    "data.batch_size": 16,
    "data.eval_batch_size": 4,
    "schedule.epochs": 2,
    "runtime.log_interval": 1,
    "runtime.device": "cpu",
}


def _tiny(root: Path) -> list[str]:
    return [f"{k}={v}" for k, v in {**TINY, "data.root": str(root)}.items()]


# ------------------------------------------------------------------ each process's part


def test_batch_bounds_split_every_batch_into_contiguous_parts():
    # 10 samples in batches of 4 ([0, 4), [4, 8), [8, 10)) over 3 processes
    parts = [batch_bounds(10, 4, 3, rank, 3) for rank in range(3)]
    assert parts == [[(0, 2), (4, 6), (8, 9)], [(2, 3), (6, 7), (9, 10)], [(3, 4), (7, 8)]]
    assert batch_bounds(10, 4, 2) == [(0, 4), (4, 8)]  # one process: the batches themselves


@pytest.mark.parametrize("train", [True, False])
def test_device_loader_parts_make_the_single_process_batches(train):
    images = torch.randint(0, 256, (23, 1, 6, 6), dtype=torch.uint8)

    def batches(rank, world):
        loader = DeviceLoader(
            images,
            torch.arange(23),
            8,
            Normalize((0.0,), (1.0,), CPU),
            train=train,
            augment="crop_flip",
            pad=2,
            seed=5,
            rank=rank,
            world=world,
        )
        return list(loader.batches(3))

    whole, parts = batches(0, 1), [batches(r, 2) for r in range(2)]
    assert len(whole) == (2 if train else 3) == len(parts[0]) == len(parts[1])
    for step, (x, y) in enumerate(whole):  # same samples, same crops and flips
        assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
        assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_folder_loader_parts_make_the_single_process_batches(tmp_path):
    root = write_image_folder(tmp_path, classes=2, train_per_class=4, val_per_class=3)
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(root),
        image_size=8,
        batch_size=4,
        eval_batch_size=4,
        workers=0,
        color_jitter=[0.2, 0.2, 0.2, 0.1],
    )

    def batches(shard, split):
        loader = getattr(build_loaders(cfg, CPU, seed=2, shard=shard), split)
        return list(loader.batches(1))

    for split in ("train", "eval"):
        whole, parts = batches((0, 1), split), [batches((r, 2), split) for r in range(2)]
        assert len(whole) == 2 == len(parts[0]) == len(parts[1])
        for step, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([parts[0][step][0], parts[1][step][0]]), x)
            assert torch.equal(torch.cat([parts[0][step][1], parts[1][step][1]]), y)


def test_batch_must_divide_among_the_processes():
    cfg = DataConfig(dataset="fashion_mnist", batch_size=30, subset=64, eval_subset=10)
    with pytest.raises(ConfigError, match=r"data.batch_size: 30 is the batch of all 4 processes"):
        build_loaders(cfg, CPU, shard=(1, 4))


def test_null_run_dir_overrides_every_writer_and_writes_nothing(tmp_path, capsys):
    methods = {n for n, v in vars(RunDir).items() if callable(v) and not n.startswith("_")}
    assert methods <= set(vars(NullRunDir)), "NullRunDir must override every RunDir method"
    null = NullRunDir(tmp_path / "run")
    null.log("hello")
    null.write_config(load_config(RECU))
    null.append_metrics({"epoch": 1})
    null.keep_metrics_until(0, 1)
    null.save_last({"x": torch.zeros(1)}, {})
    null.save_best({"x": torch.zeros(1)}, {})
    assert not (tmp_path / "run").exists() and capsys.readouterr().out == ""


def test_bad_multi_process_settings_are_config_errors(monkeypatch):
    monkeypatch.setattr(distributed, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ConfigError, match=r"runtime.sync_bn: torch's SyncBatchNorm runs on CUDA"):
        distributed.wrap(nn.Linear(2, 2), CPU, sync_bn=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with (
        pytest.raises(ConfigError, match=r"runtime.device: 'cuda:1' names one device"),
        process_group("cuda:1"),
    ):
        pass


# ------------------------------------------------------------------ 2 processes, gloo


def ddp_probe(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """A model without BatchNorm: its data-parallel gradient is exactly the whole batch's."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 3, 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def _probe_config(root: Path):
    data = {k.split(".")[1]: v for k, v in TINY.items() if k.startswith("data.")}
    return config_from_dict(
        {
            "model": {"name": "ddp_probe"},
            "data": {"dataset": "cifar10", "root": str(root), **data},
            "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-4},
            "schedule": {"epochs": 2, "lr": "cos", "warmup_steps": 2, "warmup_from": 0.5},
            "runtime": {"device": "cpu"},
        }
    )


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class _Stop(Exception):
    pass


def _ddp_worker(rank: int, world: int, port: int, out: str, data: str) -> None:
    """One of ``world`` processes, set up as torchrun would (environment variables)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    out, data = Path(out), Path(data)
    sets = _tiny(data)
    register_model(input_size=(3, 32, 32))(ddp_probe)
    with process_group("cpu"):
        # a binary recipe (ReCU ResNet-20), run in full
        trainer = Trainer(load_config(RECU, sets), RunDir(out / "full"))
        trainer.fit()
        save_file(_state(trainer.model), out / f"full_rank{rank}.safetensors")
        # the same run stopped after its first epoch on every process, resumed by the CLI
        stopped = Trainer(load_config(RECU, sets), RunDir(out / "resumed"))
        run_epoch = stopped.run_epoch

        def first_epoch_only(epoch: int):
            if epoch == 1:
                raise _Stop
            return run_epoch(epoch)

        stopped.run_epoch = first_epoch_only
        with contextlib.suppress(_Stop):
            stopped.fit()
        args = ["train", str(RECU), "--out", str(out / "resumed"), "--resume"]
        assert main([*args, *(a for s in sets for a in ("--set", s))]) == 0
        probe = Trainer(_probe_config(data), RunDir(out / "probe"))
        probe.fit()
        save_file(_state(probe.model), out / f"probe_rank{rank}.safetensors")
    if rank == 0:  # the same probe recipe in one process, the whole batch at once
        single = Trainer(_probe_config(data), RunDir(out / "probe_single"))
        single.fit()
        save_file(_state(single.model), out / "probe_single.safetensors")


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    write_cifar(out / "cifar10", "cifar10", per_file=13)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(out), str(out / "cifar10"))
    # one OpenMP thread per process from its start (not only after torch.set_num_threads):
    # two 2-thread processes beside other jobs on 2 cores oversubscribe them
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        context = mp.spawn(_ddp_worker, args=args, nprocs=2, join=False)
    deadline = time.time() + 180
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the 2-process run did not finish in 180 s")
    return out


def test_two_processes_hold_identical_weights(two_process_runs):
    out = two_process_runs
    for run in ("full", "probe"):
        a, b = (load_file(out / f"{run}_rank{r}.safetensors") for r in (0, 1))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), run  # parameters and BN statistics
    saved = load_file(out / "full" / "last.safetensors")
    held = load_file(out / "full_rank0.safetensors")
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in held.items())


def test_two_processes_equal_one_process_on_the_same_batches(two_process_runs):
    """Without BatchNorm (whose statistics are per process) a data-parallel step is the
    whole batch's step: the weights agree to float rounding of the gradient average."""
    out = two_process_runs
    ddp, single = (load_file(out / f"probe_{n}.safetensors") for n in ("rank0", "single"))
    assert all(torch.allclose(ddp[k], single[k], rtol=1e-5, atol=1e-6) for k in ddp)
    for a, b in zip(_metrics(out / "probe"), _metrics(out / "probe_single"), strict=True):
        assert a["lr"] == b["lr"] and a["val_top1"] == b["val_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_top1"] == b["train_top1"]


def test_process_0_alone_writes_and_metrics_cover_every_process(two_process_runs, one_thread):
    out = two_process_runs / "full"
    records = _metrics(out)
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 4
    log = (out / "train.log").read_text()
    assert (
        log.count("training resnet20") == 1
        and "on 2 processes on cpu" in log
        and log.count("epoch 2/2") == 1
    )
    # the evaluation of every process's part, summed, is the whole test set's
    model, config = load_model(out / "last.safetensors")
    loaders = build_loaders(config.data, CPU, train=False)
    alone = evaluate(model, loaders.eval)
    assert records[-1]["val_top1"] == pytest.approx(alone["val_top1"])
    assert records[-1]["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-5)
    assert loaders.eval.num_samples == 13


def test_resumed_two_process_run_equals_the_uninterrupted_one(two_process_runs):
    full = load_file(two_process_runs / "full" / "last.safetensors")
    resumed = load_file(two_process_runs / "resumed" / "last.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    log = (two_process_runs / "resumed" / "train.log").read_text()
    assert log.count("after epoch 1 (step 2)") == 1 and log.count("epoch 2/2") == 1
