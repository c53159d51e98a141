"""The training loop: schedules, one step of every recipe, the run directory, checkpoints,
NaN handling, a real kill-and-resume, and proof that a short run learns."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onebit.cli import main
from onebit.config import load_config, read_yaml
from onebit.errors import CheckpointError, ConfigError, TrainingError
from onebit.train import RunDir, Trainer, apply_quant_schedule, load_model, lr_at, lr_factor
from onebit.train.checkpoint import save_checkpoint
from onebit.train.losses import Batch, LossTerm, build_loss_terms

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
FP = ROOT / "configs/fmnist/resnet20_fp.yaml"
RECU = ROOT / "configs/fmnist/resnet20_recu.yaml"
TINY = ["data.subset=64", "data.batch_size=32", "data.eval_subset=64", "runtime.device=cpu"]


# ------------------------------------------------------------------ schedules


def test_lr_factor_each_kind():
    assert lr_factor("cos", 0, 10) == 1.0
    assert lr_factor("cos", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cos", 10, 10) == pytest.approx(0.0)
    assert lr_factor("linear", 2.5, 10) == pytest.approx(0.75)
    assert lr_factor("const", 7, 10) == 1.0
    assert lr_factor("step", 4.9, 10, milestones=[5, 8]) == 1.0
    assert lr_factor("step", 5, 10, milestones=[5, 8]) == pytest.approx(0.1)
    assert lr_factor("step", 9, 10, milestones=[5, 8], gamma=0.5) == pytest.approx(0.25)
    # warm-up: linear up to 1, then the decay runs over the remaining epochs
    assert lr_factor("cos", 0.5, 10, warmup_epochs=2) == pytest.approx(0.25)
    assert lr_factor("cos", 6, 10, warmup_epochs=2) == pytest.approx(0.5)


def test_lr_at_is_per_step():
    schedule = load_config(FP, ["schedule.epochs=2", "schedule.warmup_epochs=1"]).schedule
    assert lr_at(schedule, 0, 0, 4) == pytest.approx(0.25)  # first warm-up step is non-zero
    assert lr_at(schedule, 0, 3, 4) == pytest.approx(1.0)
    assert lr_at(schedule, 1, 2, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_warm_up_from_a_fraction_in_steps_matches_the_official_logs():
    """IR-Net: lr 0.2 -> 0.8 over 2500 iterations, x0.1 at 18750; at 625 steps per epoch."""
    irnet = load_config(ROOT / "configs/imagenet/resnet18_irnet.yaml").schedule
    assert lr_at(irnet, 0, 0, 625) == pytest.approx(0.25 + 0.75 / 2500)
    assert lr_at(irnet, 3, 624, 625) == pytest.approx(1.0)  # step 2499, the last of warm-up
    assert lr_at(irnet, 4, 0, 625) == 1.0
    assert lr_at(irnet, 29, 624, 625) == 1.0 and lr_at(irnet, 30, 0, 625) == pytest.approx(0.1)
    assert lr_at(irnet, 99, 624, 625) == pytest.approx(1e-3)
    # mmcls irnet_r18 (lr 0.4, warm-up ratio 0.25, 1252 iterations per epoch): its log prints
    # lr 1.119e-01 at iteration 100 and 2.199e-01 at 1000; onebit is one warm-up step ahead
    mmcls = load_config(ROOT / "configs/imagenet/resnet18_irnet_mmcls.yaml").schedule
    one_step = 0.4 * 0.75 / 2500
    assert abs(0.4 * lr_at(mmcls, 0, 99, 1251) - 0.1119) < one_step
    assert abs(0.4 * lr_at(mmcls, 0, 999, 1251) - 0.2199) < one_step
    assert lr_factor("cos", 0.5, 10, warmup_epochs=1, warmup_from=0.5) == pytest.approx(0.75)


def test_label_smoothing_is_the_official_formula():
    config = load_config(FP, ["loss.label_smoothing=0.1"])
    (term,) = build_loss_terms(config)
    logits, targets = torch.randn(4, 10), torch.tensor([0, 3, 9, 3])
    log_p = logits.log_softmax(1)
    # Bi-Real CrossEntropyLabelSmooth: targets (1 - eps) one_hot + eps / K, summed, batch mean
    smooth = torch.full((4, 10), 0.1 / 10).scatter_add(1, targets[:, None], torch.full((4, 1), 0.9))
    expected = (-smooth * log_p).sum(1).mean()
    assert torch.allclose(term.fn(Batch(None, targets, logits)), expected, atol=1e-6)
    with pytest.raises(ConfigError, match=r"loss.label_smoothing: 1.5 is above the maximum 1.0"):
        load_config(FP, ["loss.label_smoothing=1.5"])


# ------------------------------------------------------------------ every recipe, one step


CLASSES = {"fmnist": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3), "imagenet": (2, 3)}


def tiny_overrides(path: Path, cifar_roots, imagenet_root, teacher_file) -> list[str]:
    """--set values that make the recipe at ``path`` take a 2-image step on the CPU: a KD
    recipe gets an untrained teacher of its teacher model, a recipe that starts from another
    run (``init:``) starts from scratch, ImageNet recipes read a tiny image folder at 32x32,
    a phase that changes the batch size gets 2 as well."""
    overrides = [
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "runtime.device=cpu",
        "runtime.compile=false",
    ]
    dataset = path.parent.name
    if dataset == "imagenet":  # big models: 2 classes of 32x32 images
        overrides += [
            f"data.root={imagenet_root}",
            "data.image_size=32",
            "data.workers=0",
            "model.num_classes=2",
        ]
    else:
        overrides += ["data.subset=2", "data.eval_subset=2"]
    if dataset in cifar_roots:
        overrides += [f"data.root={cifar_roots[dataset]}", "data.checksum=false"]
    raw = read_yaml(path)
    if (raw.get("data") or {}).get("val_split"):
        overrides.append("data.val_split=2")  # of the few training images the tests write
    if raw.get("init"):
        overrides.append("init=null")
    if raw.get("distill"):
        teacher = teacher_file(raw["distill"]["teacher"]["model"], *CLASSES[dataset])
        overrides.append(f"distill.teacher.checkpoint={teacher}")
    for i, phase in enumerate(raw.get("phases") or ()):
        if "batch_size" in (phase.get("overrides") or {}).get("data", {}):
            overrides.append(f"phases.{i}.overrides.data.batch_size=2")
    return overrides


def one_step_per_phase(config) -> None:
    """Build the recipe, take one step in each of its phases (weights carried over)."""
    trainer = Trainer(config)
    values = apply_quant_schedule(trainer.model, config.quant, 0, config.schedule.epochs)
    method = config.model["method"]
    assert set(values) == {"recu": {"tau"}, "irnet": {"ede_t", "ede_k"}}.get(method, set())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_epoch(0, max_steps=1)
    assert math.isfinite(metrics["train_loss"]) and trainer.progress.step == 1
    changed = sum(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )
    assert changed > len(before) // 2
    for phase in range(1, len(trainer.phases)):
        trainer._setup_phase(phase, carry="phase")
        metrics = trainer.train_epoch(0, max_steps=1)
        assert math.isfinite(metrics["train_loss"]), config.phases[phase].name
    assert trainer.progress.step == len(trainer.phases)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_trains_one_step(path, cifar_roots, imagenet_root, teacher_file, one_thread):
    overrides = tiny_overrides(path, cifar_roots, imagenet_root, teacher_file)
    one_step_per_phase(load_config(path, overrides))


# ------------------------------------------------------------------ a run and its directory


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "fp"
    config = load_config(FP, [*TINY, "schedule.epochs=2"])
    result = Trainer(config, RunDir(out)).fit()
    return out, result


def test_run_directory_contents(tiny_run):
    out, result = tiny_run
    names = {p.name for p in out.iterdir()}
    assert names == {
        ".lock",  # held while the run trains (RunDir.hold)
        "config.yaml",
        "metrics.jsonl",
        "last.safetensors",
        "last.json",
        "best.safetensors",
        "train.log",
    }
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    keys = {
        "epoch",
        "lr",
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "seconds",
        "images_per_s",
    }
    assert keys <= set(records[0])
    assert 0 <= records[1]["val_top1"] <= records[1]["val_top5"] <= 100
    assert records[1]["step"] == 4 and result["val_top1"] == records[1]["val_top1"]
    resolved = load_config(out / "config.yaml")  # the saved config is complete and valid
    assert resolved.model["in_chans"] == 1 and resolved.model["downsample"] is None
    assert resolved.runtime.out == str(out)
    state = json.loads((out / "last.json").read_text())
    assert state["progress"]["epoch"] == 2 and state["progress"]["step"] == 4
    assert "cpu" in state["rng"] and state["optimizers"][0]["param_groups"][0]["base_lr"] == 0.1
    tensors = load_file(out / "last.safetensors")
    assert any(k.startswith("optim.0.") and k.endswith("momentum_buffer") for k in tensors)
    assert "epoch 2/2" in (out / "train.log").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_load_model_and_eval(tiny_run, capsys):
    out, result = tiny_run
    model, config = load_model(out)
    assert not model.training and config.model["method"] == "fp"
    best = load_file(out / "best.safetensors")
    assert torch.equal(model.stages[0][0].conv1.weight, best["model.stages.0.0.conv1.weight"])
    from_file, _ = load_model(out / "last.safetensors")
    last = load_file(out / "last.safetensors")
    assert torch.equal(from_file.head.fc.weight, last["model.head.fc.weight"])
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"val_top1 {result['best_top1']:.2f}%" in printed and "(64 images" in printed


def test_bad_checkpoints_are_one_line_errors(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    with pytest.raises(CheckpointError, match=r"holds no best\.safetensors or last\.safetensors"):
        load_model(tmp_path)
    corrupt = tmp_path / "x.safetensors"
    corrupt.write_bytes((out / "best.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is not a safetensors checkpoint"):
        load_model(corrupt)
    # a checkpoint without its own config is read with the config.yaml beside it
    bare = tmp_path / "bare"
    save_checkpoint(bare / "best.safetensors", load_file(out / "best.safetensors"), {})
    config = (out / "config.yaml").read_text()
    (bare / "config.yaml").write_text(config)
    assert load_model(bare)[1].model["name"] == "resnet20"
    (bare / "config.yaml").write_text(config.replace("num_classes: 10", "num_classes: 7"))
    with pytest.raises(
        CheckpointError,
        match=r"match the model: head.fc.weight has shape \(10, 64\), the model \(7, 64\)",
    ):
        load_model(bare)
    (bare / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="stores no config and there is no"):
        load_model(bare)
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("onebit: error: ")


def test_existing_run_needs_resume_and_same_config(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        Trainer(load_config(FP, [*TINY, "schedule.epochs=2"]), RunDir(out)).fit()
    changed = load_config(FP, [*TINY, "schedule.epochs=2", "optim.lr=0.2"])
    with pytest.raises(CheckpointError, match=r"config differs at optim.lr \(saved 0.1, now 0.2\)"):
        Trainer(changed, RunDir(out)).fit(resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config(FP, [*TINY, "schedule.epochs=3", "runtime.log_interval=1"])
    run = RunDir(tmp_path / "nan")
    trainer = Trainer(config, run)

    def poisoned(batch):
        return torch.tensor(math.nan) if trainer.progress.epoch == 1 else torch.zeros(())

    trainer._setup_phase = lambda index: None  # keep the patched loss terms
    trainer.loss_terms = [trainer.loss_terms[0], LossTerm("nan", 1.0, poisoned)]
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 2 by step 1"):
        trainer.fit()
    state = json.loads(run.last_json.read_text())
    assert state["progress"]["epoch"] == 1
    assert len(run.metrics.read_text().splitlines()) == 1
    assert all(
        torch.isfinite(v).all() for v in load_file(run.last).values() if v.is_floating_point()
    )


def test_a_phase_with_an_offset_continues_the_binarizer_schedule(tmp_path):
    # ReCU tau over one schedule of 4 epochs split into phases of 2 + 2 (offset 2)
    from onebit.quant import tau_schedule

    config = load_config(
        RECU,
        [
            *TINY,
            "schedule.epochs=2",
            "schedule.total_epochs=4",
            "phases=[{name: a}, {name: b, overrides: {schedule: {offset: 2}}}]",
        ],
    )
    Trainer(config, RunDir(tmp_path / "r")).fit()
    records = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    expected = [tau_schedule(e, 4, 0.85, 0.99) for e in range(4)]
    assert [r["tau"] for r in records] == pytest.approx(expected)


def test_a_run_resumes_after_its_model_gained_an_option(tmp_path):
    # a run started before resnet20 had `structure` / `head_act` / `init`: its saved config
    # lacks them; they take their defaults, which build the same model
    from onebit.train.checkpoint import read_checkpoint

    run = RunDir(tmp_path / "old")
    Trainer(load_config(FP, [*TINY, "schedule.epochs=1"]), run).fit()
    tensors, state = read_checkpoint(run.last)
    for key in ("structure", "head_act", "init"):
        del state["config"]["model"][key]
    save_checkpoint(run.last, tensors, state)
    trainer = Trainer(load_config(FP, [*TINY, "schedule.epochs=1"]), run)
    trainer.fit(resume=True)  # nothing left to train: it restores and stops
    assert trainer.progress.epoch == 1
    assert "resumed" in run.log_file.read_text()


def test_resume_without_a_checkpoint_starts(tmp_path):
    result = Trainer(load_config(FP, [*TINY, "schedule.epochs=1"]), RunDir(tmp_path)).fit(
        resume=True
    )
    assert result["epoch"] == 1


# ------------------------------------------------------------------ kill and resume


@pytest.mark.slow
def test_killed_run_resumes_to_bit_identical_weights(tmp_path):
    args = [
        str(RECU),
        "--set",
        "data.subset=64",
        "--set",
        "data.batch_size=32",
        "--set",
        "data.eval_subset=32",
        "--set",
        "schedule.epochs=3",
        "--set",
        "runtime.log_interval=1",
        "--set",
        "runtime.device=cpu",
    ]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onebit", "train", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # into epoch 2
    proc.kill()
    proc.wait()
    assert len(metrics.read_text().splitlines()) < 3, "the run finished before it was killed"
    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0
    assert main(["train", *args, "--out", str(reference)]) == 0
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ref_lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    got_lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    key = ("epoch", "train_loss", "val_loss", "val_top1", "tau")
    assert [[r[k] for k in key] for r in got_lines] == [[r[k] for k in key] for r in ref_lines]


# ------------------------------------------------------------------ it learns


def test_short_fashion_mnist_run_learns(tmp_path):
    """768 images, 2 epochs (48 steps): this loop reached 63.4% on 500 test images; a broken
    one (no gradient, no lr, shuffled labels) stays near chance, 10%."""
    config = load_config(
        FP,
        [
            "data.subset=768",
            "data.batch_size=32",
            "data.eval_subset=500",
            "schedule.epochs=2",
            "runtime.device=cpu",
        ],
    )
    result = Trainer(config, RunDir(tmp_path)).fit()
    assert result["val_top1"] > 50.0, result


@pytest.mark.slow
def test_compiled_cpu_run_says_so_and_times_compiling_apart(
    tmp_path, capsys, one_thread, monkeypatch
):
    """runtime.compile: true on the CPU (a smoke run): the run says it compiles, records the
    compiling step's time as compile_seconds, and its img/s counts the other steps only; the
    compiled kernels are kept beside the run directory for the next run."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    config = load_config(
        FP, [*TINY, "schedule.epochs=1", "runtime.compile=true", "runtime.log_interval=1"]
    )
    trainer = Trainer(config, RunDir(tmp_path / "run"))
    assert trainer.forward is not trainer.model  # compiled
    result = trainer.fit()
    out = capsys.readouterr().out
    assert "compiling with torch.compile" in out and "compiled in" in out
    record = json.loads((tmp_path / "run/metrics.jsonl").read_text())
    assert record["compile_seconds"] > 0 and math.isfinite(result["val_top1"])
    assert record["images_per_s"] == pytest.approx(32 / record["seconds"])  # 1 of 2 steps
    cache = tmp_path / ".inductor-cache"
    assert f"compiled kernels are kept in {cache}" in out
    assert any((cache / "fxgraph").rglob("*"))  # the compiled graphs, for the next run

    # a variable the user set is theirs
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    Trainer(config, RunDir(tmp_path / "other" / "run"))
    assert not (tmp_path / "other" / ".inductor-cache").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_precision_switches_bf16_autocast(precision, tmp_path, one_thread):
    """runtime.cpu_precision: bf16 trains the CPU run under bf16 autocast (a smoke run: the
    convolutions compute in bf16, the weights stay fp32, the loss is finite); fp32, the
    default, leaves it off. runtime.precision is the GPU's and changes nothing here."""
    options = [*TINY, "schedule.epochs=1", f"runtime.cpu_precision={precision}"]
    config = load_config(RECU, [*options, "runtime.precision=bf16"])
    trainer = Trainer(config, RunDir(tmp_path / "run"))
    assert trainer.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
    seen = []
    trainer.model.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    result = trainer.fit()
    assert math.isfinite(result["val_top1"]) and seen
    assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_cpu_bf16_without_native_support_warns(monkeypatch):
    monkeypatch.setattr("onebit.train.trainer.cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without AVX512-BF16 or AMX is emulated"):
        Trainer(load_config(RECU, [*TINY, "runtime.cpu_precision=bf16"]))


def test_compile_auto_is_cuda_only():
    trainer = Trainer(load_config(FP, [*TINY, "schedule.epochs=1000"]))
    assert trainer._should_compile() is False and trainer.forward is trainer.model
