"""BatchNorm running statistics: recalibration re-estimates them from training batches, and
restores evaluation accuracy when the stored ones have gone stale."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import stop_in_epoch_two
from onebit.cli import main
from onebit.config import load_config
from onebit.data import build_loaders
from onebit.deploy import load
from onebit.errors import CheckpointError
from onebit.train import RunDir, Trainer, load_model
from onebit.train.bn import batchnorms, recalibrate_bn
from onebit.train.checkpoint import DATA_SHA256
from onebit.train.trainer import evaluate

RECU = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"


def _tiny(subset: int, eval_subset: int, epochs: int, *extra: str) -> list[str]:
    """--set values for a short eager CPU run of the Fashion-MNIST ReCU recipe."""
    return [
        f"data.subset={subset}",
        "data.batch_size=64",
        f"data.eval_subset={eval_subset}",
        f"schedule.epochs={epochs}",
        "runtime.device=cpu",
        "runtime.compile=false",
        *extra,
    ]


def test_recalibration_is_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3))
    batches = [(torch.randn(4, 2, 6, 6) * (i + 1) + i, None) for i in range(5)]
    conv = model[0]
    weight = conv.weight.detach().clone()
    model.eval()
    used = recalibrate_bn(model, batches, steps=3)
    assert used == 3 and not model.training
    outputs = [conv(x).detach() for x, _ in batches[:3]]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs])
    variances = torch.stack([o.var(dim=(0, 2, 3)) for o in outputs])  # unbiased, as BN keeps
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == 0.1 and torch.equal(conv.weight, weight)
    assert len(batchnorms(model)) == 2


def test_recalibration_restores_stale_statistics(tmp_path, one_thread):
    """A tiny 1-bit ResNet-20 trained on Fashion-MNIST, whose running statistics are then
    stale: a few more steps at a high learning rate with the statistics frozen (momentum 0),
    so they describe the weights of before, and, the extreme case, statistics never updated
    (mean 0, var 1). With stale statistics evaluation falls below the train-mode (batch
    statistics) accuracy; recalibrated it is back at that level. Measured: stale 40.0%,
    never updated 10.4%, recalibrated 41.0%, batch statistics 41.4%."""
    overrides = _tiny(1536, 512, 2, "data.eval_batch_size=128")
    config = load_config(RECU, overrides)
    trainer = Trainer(config, RunDir(tmp_path / "run"))
    trainer.fit()
    model, loaders = trainer.model, trainer.loaders
    for m in batchnorms(model):
        m.momentum = 0.0  # the running statistics stay those of the trained weights
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for i, (x, y) in enumerate(loaders.train.batches(5)):
        if i == 4:
            break
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for m in batchnorms(model):
        m.momentum = 0.1
    stale = evaluate(model, loaders.eval)["val_top1"]
    reference = _batch_statistics_top1(model, loaders.eval)
    for m in batchnorms(model):
        m.reset_running_stats()  # the extreme case: never updated
    never = evaluate(model, loaders.eval)["val_top1"]
    recalibrate_bn(model, loaders.train.batches(6, augment=False), steps=16)
    fresh = evaluate(model, loaders.eval)["val_top1"]
    figures = {"stale": stale, "never": never, "fresh": fresh, "batch statistics": reference}
    assert abs(fresh - reference) < 3, figures
    assert fresh > never + 10 and fresh >= stale - 1 and fresh > 30, figures


def _batch_statistics_top1(model: nn.Module, loader) -> float:
    """Test accuracy with every BatchNorm normalising by its batch's statistics (train mode,
    under no_grad: the running statistics change, the accuracy does not depend on them)."""
    correct = total = 0
    model.train()
    with torch.no_grad():
        for x, y in loader.batches(0):
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    model.eval()
    return 100 * correct / total


def test_trainer_records_both_statistics_and_checkpoints_the_recalibrated(tmp_path, one_thread):
    overrides = _tiny(256, 128, 1, "eval.bn_recalibrate=2")
    run = RunDir(tmp_path / "run")
    trainer = Trainer(load_config(RECU, overrides), run)
    trainer.fit()
    record = json.loads(run.metrics.read_text().splitlines()[0])
    assert {"val_top1", "val_top1_stored", "val_loss_stored"} <= record.keys()
    # the checkpoint holds the recalibrated statistics: evaluating it reproduces val_top1,
    # and so does recalibrating it again from the same batches
    model, config = load_model(run.last)
    loaders = build_loaders(config.data, torch.device("cpu"))
    assert evaluate(model, loaders.eval)["val_top1"] == record["val_top1"]
    recalibrate_bn(model, loaders.train.batches(0, augment=False), steps=2)
    assert evaluate(model, loaders.eval)["val_top1"] == record["val_top1"]


def test_export_recalibrates_and_the_packed_engine_gives_that_accuracy(
    tmp_path, capsys, one_thread
):
    """A mid-training checkpoint whose stored statistics are stale (running statistics of
    another network): export re-estimates them, and the C runtime reproduces the
    recalibrated accuracy; --no-recalibrate keeps the stored ones."""
    overrides = _tiny(1536, 256, 2)
    run = RunDir(tmp_path / "run")
    trainer = Trainer(load_config(RECU, overrides), run)
    trainer.fit()
    tensors = load_file(run.last)
    for key in tensors:  # stale: never updated (mean 0, var 1), not this network's
        if key.endswith("running_mean"):
            tensors[key] = torch.zeros_like(tensors[key])
        if key.endswith("running_var"):
            tensors[key] = torch.ones_like(tensors[key])
    # edited by hand: the metadata without the digest of the old tensor bytes
    metadata = safe_open(run.last, "pt").metadata()
    del metadata[DATA_SHA256]
    save_file(tensors, run.last, metadata=metadata)
    (tmp_path / "run/best.safetensors").unlink()
    assert main(["export", str(run.path), str(tmp_path / "m.onebit"), "--bn-recalibrate", "4"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    stored, recalibrated, packed = (float(v) for v in re.findall(r"([\d.]+)% ", line))
    assert "re-estimated from 4 training batches" in line
    assert recalibrated == packed and recalibrated > stored + 10, line
    assert main(["export", str(run.path), str(tmp_path / "s.onebit"), "--no-recalibrate"]) == 0
    assert "re-estimated" not in capsys.readouterr().out
    loaders = build_loaders(trainer.config.data, torch.device("cpu"), train=False)
    assert round(evaluate(load(tmp_path / "s.onebit"), loaders.eval)["val_top1"], 2) == stored


def test_a_run_may_resume_with_another_eval_setting(tmp_path, one_thread):
    """eval.* changes how a run is evaluated, not what it trains: like runtime.*, it may
    differ when the run is resumed, and the epochs after the resume are evaluated the new way."""
    run = RunDir(tmp_path / "run")
    stop_in_epoch_two(Trainer(load_config(RECU, _tiny(128, 64, 2, "eval.bn_recalibrate=0")), run))
    Trainer(load_config(RECU, _tiny(128, 64, 2, "eval.bn_recalibrate=1")), run).fit(resume=True)
    first, second = (json.loads(line) for line in run.metrics.read_text().splitlines())
    # resumed, not restarted: epoch 2 follows epoch 1's two steps (128 images, batch 64)
    assert (first["epoch"], first["step"], second["epoch"], second["step"]) == (1, 2, 2, 4)
    # only the epoch after the resume recalibrated its statistics (and kept the stored figures)
    assert "val_top1_stored" not in first and "val_top1_stored" in second
    assert load_config(run.config).eval.bn_recalibrate == 1  # the run's config says so now
    changed = load_config(RECU, _tiny(128, 64, 2, "optim.lr=0.3"))
    with pytest.raises(CheckpointError, match=r"config differs at optim\.lr"):
        Trainer(changed, run).fit(resume=True)
