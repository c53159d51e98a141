"""Training methods: the BNEW regulariser and phases, Bop, BMD, distillation losses, BN
re-estimation, repeated runs, and a multi-phase run killed in phase 2 and resumed."""

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from onebit.cli import main
from onebit.config import load_config
from onebit.errors import ConfigError
from onebit.nn import BATCHNORMS
from onebit.train import RunDir, Trainer
from onebit.train.losses import (
    Batch,
    build_loss_terms,
    distillation_terms,
    distributional,
    kd_kl,
    total_loss,
)
from onebit.train.optim import BMD, Bop, bmd_beta
from onebit.train.regularizers import (
    binary_weights,
    bnew_prox_,
    bnew_reg,
    bnew_regularizer,
    center_,
    freeze_binary_,
)
from onebit.train.repeat import parse_seeds
from onebit.train.techniques import TECHNIQUES, BnewProx

ROOT = Path(__file__).resolve().parent.parent
FMNIST = ROOT / "configs/fmnist"
# birealnet8 on 64 Fashion-MNIST images: 2 steps of 32 per epoch
TINY = [
    "data.subset=64",
    "data.eval_subset=32",
    "data.batch_size=32",
    "data.augment=none",
    "runtime.device=cpu",
    "runtime.compile=false",
]


# ------------------------------------------------------------------ XNOR-Net's centring


def test_center_subtracts_the_mean_over_input_channels():
    w = torch.randn(4, 3, 2, 2)
    lin = torch.randn(5, 7)
    expected = [w - w.mean(dim=1, keepdim=True), lin - lin.mean(dim=1, keepdim=True)]
    center_([w, lin])
    assert all(torch.allclose(a, b) for a, b in zip([w, lin], expected, strict=True))
    assert w.mean(dim=1).abs().max() < 1e-6 and lin.mean(dim=1).abs().max() < 1e-6


def test_latent_center_then_clamp_after_every_step(tmp_path, one_thread):
    """latent.center (XNOR-Net) trains: after every step the latent weights are centred over
    their input channels, then clamped (the clamp after the centring: |w| <= 1 at the end)."""
    sets = [*TINY, "model.method=xnor_exact", "schedule.epochs=1", "optim.lr=0.5"]
    config = load_config(FMNIST / "resnet20_recu.yaml", [*sets, "latent.center=true"])
    trainer = Trainer(config, RunDir(tmp_path / "center"))
    trainer.fit()
    weights = [w.detach() for _, w in binary_weights(trainer.model)]
    assert len(weights) == 18 and trainer.progress.step == 2
    assert max(float(w.mean(dim=1).abs().max()) for w in weights) < 1e-6
    config = load_config(
        FMNIST / "resnet20_recu.yaml", [*sets, "latent.center=true", "latent.clamp=true"]
    )
    trainer = Trainer(config, RunDir(tmp_path / "both"))
    trainer.fit()
    assert max(float(w.detach().abs().max()) for _, w in binary_weights(trainer.model)) <= 1
    order = list(TECHNIQUES)  # the order techniques run in
    assert order.index("latent_center") < order.index("latent_clamp")


# ------------------------------------------------------------------ BNEW regulariser


def test_bnew_regulariser_value_gradient_and_prox_step():
    w = torch.tensor([0.5, -0.25, 0.0, 0.9, -1.0], requires_grad=True)
    r = bnew_regularizer(w)
    assert r.item() == pytest.approx(-(0.25 + 0.0625 + 0.0 + 0.81 + 1.0))
    r.backward()
    assert torch.equal(w.grad, -2 * w.detach())
    # the proximal step w <- clamp(w - reg dR/dw, -1, 1) = clamp((1 + 2 reg) w, -1, 1)
    v = w.detach().clone()
    bnew_prox_([v], 0.25)
    assert v.tolist() == pytest.approx([0.75, -0.375, 0.0, 1.0, -1.0])
    # reg = min(reg0 (e + 1) / E, 1)
    assert bnew_reg(0, 10, 0.07) == pytest.approx(0.007)
    assert bnew_reg(9, 10, 0.07) == pytest.approx(0.07)
    assert bnew_reg(4, 10, 50.0) == 1.0
    # the technique: a phase starting at epoch 3 of E = 10; its epoch 1 is the ramp's 4th
    from onebit.nn import BinaryConv2d

    config = load_config(FMNIST / "birealnet8_bnew.yaml", ["latent.bnew.epochs=10"])
    config.schedule.offset = 3
    model = torch.nn.Sequential(BinaryConv2d(2, 3, 3, act="rsign", weight="xnor"))
    trainer = SimpleNamespace(model=model, phase_config=config)
    prox = BnewProx(config.latent.bnew)
    prox.start(trainer)
    assert prox.epoch_start(trainer, 1) == {"bnew_reg": pytest.approx(0.035)}


# ------------------------------------------------------------------ Bop


def test_bop_flips_exactly_where_momentum_crosses_the_threshold_with_the_weight_sign():
    # weights 1, 1, -1, -1, 1, -1; momentum 0; gamma 0.5, threshold 0.1
    w = torch.nn.Parameter(torch.tensor([0.3, 2.0, -0.7, -0.01, 0.0, -5.0]))
    opt = Bop([w], gamma=0.5, threshold=0.1)
    assert w.tolist() == [1, 1, -1, -1, 1, -1]  # latent-free: the weights are signs
    w.grad = torch.tensor([0.4, 0.1, -0.3, 0.4, -0.4, -0.2])
    opt.step()
    # m = 0.5 g = [0.2, 0.05, -0.15, 0.2, -0.2, -0.1]; flip where m w > 0.1:
    # 0.2 > 0.1 flip; 0.05 below; -0.15 * -1 flip; sign differs; sign differs; 0.1 not > 0.1
    assert opt.state[w]["momentum"].tolist() == pytest.approx([0.2, 0.05, -0.15, 0.2, -0.2, -0.1])
    assert w.tolist() == [-1, 1, 1, -1, 1, -1]
    # adaptivity: m <- m + gamma (g - m); gamma is the group's lr (the schedule scales it)
    opt.param_groups[0]["lr"] = 0.25
    w.grad = torch.tensor([0.0, 0.45, 0.0, 0.0, 0.0, -0.9])
    opt.step()
    m = torch.tensor([0.2, 0.05, -0.15, 0.2, -0.2, -0.1])
    m = m + 0.25 * (w.grad - m)
    assert opt.state[w]["momentum"].tolist() == pytest.approx(m.tolist())
    # m = [0.15, 0.15, -0.1125, 0.15, -0.15, -0.3]; m w = [-0.15, 0.15, -0.1125, -0.15, -0.15, 0.3]
    assert w.tolist() == [-1, -1, 1, -1, 1, 1]


# ------------------------------------------------------------------ BMD


def test_bmd_is_adam_in_the_mirror_space_of_tanh():
    u0 = torch.tensor([0.5, -0.2, 0.1])
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-0.5, 1.0, 0.25])
    lr, b1, b2, eps, beta = 0.1, 0.9, 0.999, 1e-8, 2.0
    w = torch.nn.Parameter(u0.clone())
    opt = BMD([w], lr=lr, betas=(b1, b2), eps=eps, beta=beta)
    assert torch.allclose(w, torch.tanh(beta * u0))
    u, m, v = u0.clone(), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate((g1, g2), start=1):
        w.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        u = u - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        assert torch.allclose(opt.state[w]["u"], u, atol=1e-6)
        assert torch.allclose(w, torch.tanh(beta * u), atol=1e-6)
    opt.set_beta(5.0)  # annealing re-projects w = tanh(beta u)
    assert torch.allclose(w, torch.tanh(5.0 * u), atol=1e-6)
    # the primal form (MD-tanh) is the same step written in w while beta is constant
    p = torch.nn.Parameter(u0.clone())
    primal = BMD([p], lr=lr, betas=(b1, b2), eps=eps, beta=beta, form="primal")
    for g in (g1, g2):
        p.grad = g.clone()
        primal.step()
    assert torch.allclose(p, torch.tanh(beta * u), atol=1e-5)
    assert bmd_beta(0, 1.01, 1e35) == 1.0
    assert bmd_beta(100, 1.01, 1e35) == pytest.approx(1.01**100)
    assert bmd_beta(10, 3.0, 100.0) == 100.0


# ------------------------------------------------------------------ distillation losses


def _softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


def _cross_entropy(p, q):
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q, strict=True))


def test_kd_losses_against_hand_computation():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    student, teacher, temp = torch.tensor(s), torch.tensor(t), 2.0
    # T^2 KL(softmax(t / T) || softmax(s / T)), mean over the batch
    kl = [_kl(_softmax(b, temp), _softmax(a, temp)) for a, b in zip(s, t, strict=True)]
    assert kd_kl(student, teacher, temp).item() == pytest.approx(temp**2 * sum(kl) / 2, rel=1e-5)
    # ReActNet: -sum softmax(t) log softmax(s), mean over the batch
    ce = [_cross_entropy(_softmax(b), _softmax(a)) for a, b in zip(s, t, strict=True)]
    assert distributional(student, teacher).item() == pytest.approx(sum(ce) / 2, rel=1e-5)
    # = KL + the teacher's entropy at T = 1 (so the same gradient as kl with alpha 1, T 1)
    entropy = [_cross_entropy(_softmax(b), _softmax(b)) for b in t]
    assert distributional(student, teacher).item() == pytest.approx(
        kd_kl(student, teacher).item() + sum(entropy) / 2, rel=1e-5
    )


class FakeDistiller:
    def __init__(self, logits):
        self.logits = logits

    def teacher(self, batch):
        return type("Out", (), {"logits": self.logits})


@pytest.mark.parametrize(
    ("distill", "weights"),
    [
        ("distill.loss=kl distill.alpha=0.7 distill.temperature=4", {"ce": 0.3, "kl": 0.7}),
        ("distill.loss=kl distill.alpha=0.5 distill.ce_weight=1.0", {"ce": 1.0, "kl": 0.5}),
        ("distill.loss=distributional", {"distributional": 1.0}),
    ],
)
def test_kd_loss_mix(distill, weights):
    overrides = ["distill.teacher.model.name=wrn10", "distill.teacher.checkpoint=t.safetensors"]
    config = load_config(FMNIST / "resnet20_fp.yaml", [*overrides, *distill.split()])
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([0, 3, 9, 2])
    terms = distillation_terms(build_loss_terms(config), config.distill, FakeDistiller(t))
    assert {term.name: term.weight for term in terms} == pytest.approx(weights)
    kd = {"kl": kd_kl(s, t, config.distill.temperature), "distributional": distributional(s, t)}
    parts = {"ce": F.cross_entropy(s, y), **kd}
    expected = sum(w * parts[name] for name, w in weights.items())
    assert total_loss(terms, Batch(s, y, s)).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ phases on a real model


def _latent(trainer):
    return [w.detach().clone() for _, w in binary_weights(trainer.model)]


def test_bnew_phases_make_the_weights_binary_then_freeze_them(tmp_path, monkeypatch):
    """BNEW phase 2 (the prox step, a strong reg0) then the freeze phase: the latent weights
    are +-1 when phase 2 ends; the freeze phase keeps them while the rest trains."""
    import onebit.train.techniques as techniques_module

    seen = []

    def spy(model):
        seen.append([w.detach().clone() for _, w in binary_weights(model)])
        return freeze_binary_(model)

    monkeypatch.setattr(techniques_module, "freeze_binary_", spy)
    # 2 epochs of 8 steps, reg = min(4 (e + 1) / 2, 1) = 1 (w <- clamp(3 w, -1, 1) after
    # each step), Adam 1e-3 decaying linearly to 0 at the end of phase 2
    overrides = [*TINY, "data.batch_size=8", "init=null", "schedule.epochs=2", "optim.lr=0.001"]
    overrides.append("schedule.total_epochs=null")
    config = load_config(FMNIST / "birealnet8_bnew.yaml", [*overrides, "latent.bnew.reg=4"])
    config.phases[1].overrides["schedule"] = {"epochs": 1, "offset": 2, "total_epochs": 3}
    trainer = Trainer(config, RunDir(tmp_path / "bnew"))
    start = _latent(trainer)
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "bnew/metrics.jsonl").read_text().splitlines()]
    assert [(r["phase_name"], r["epoch"]) for r in records] == [
        ("bnew", 1),
        ("bnew", 2),
        ("freeze", 1),
    ]
    assert records[0]["bnew_reg"] == 1.0
    (at_freeze,) = seen  # the latent weights when phase 2 ended
    for w0, w in zip(start, at_freeze, strict=True):
        assert not torch.allclose(w0.abs(), torch.ones_like(w0))
        assert (w.abs() - 1).abs().max() < 1e-6, (w.abs() - 1).abs().max()
    final = _latent(trainer)
    assert all(torch.equal(a, b) for a, b in zip(at_freeze, final, strict=True))
    assert all(not w.requires_grad for _, w in binary_weights(trainer.model))
    # the same phase without the regulariser leaves real-valued weights
    control = load_config(FMNIST / "birealnet8_bnew.yaml", [*overrides, "phases=null"])
    control.schedule.epochs = 1
    control.latent.bnew = None
    trainer = Trainer(control, RunDir(tmp_path / "control"))
    trainer.fit()
    assert not any(torch.allclose(w.abs(), torch.ones_like(w)) for w in _latent(trainer))


def test_freeze_uses_the_layers_binarized_weight():
    from onebit.nn import BinaryConv2d

    layer = BinaryConv2d(2, 3, 3, act="rsign", weight="xnor")
    w = layer.weight.detach().clone()
    model = torch.nn.Sequential(layer)
    assert freeze_binary_(model) == 1
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(layer.weight, alpha * torch.where(w >= 0, 1.0, -1.0))
    assert not layer.weight.requires_grad
    fp = torch.nn.Sequential(BinaryConv2d(2, 3, 3, act="rsign", weight=None))
    with pytest.raises(ConfigError, match=r"latent\.freeze: layer 0 does not binarize its weight"):
        freeze_binary_(fp)


def test_bn_reestimation_phase_trains_only_batchnorm(tmp_path):
    """Bi-Real's last step: binary weights fixed to their signs, only BatchNorm trains (its
    affine parameters by the optimizer, its running statistics re-estimated)."""
    config = load_config(
        FMNIST / "birealnet8_bnew_ste.yaml",
        [*TINY, "init=null", "schedule.epochs=1", "latent.freeze=true", "optim.train=batchnorm"],
    )
    trainer = Trainer(config)
    norms = {
        n
        for name, m in trainer.model.named_modules()
        if isinstance(m, BATCHNORMS)
        for n in (f"{name}.{k}" for k, _ in m.named_parameters())
    }
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    stats = {n: b.clone() for n, b in trainer.model.named_buffers() if "running_mean" in n}
    trainer.train_epoch(0, max_steps=2)
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= norms
    assert all(not torch.equal(stats[n], b) for n, b in trainer.model.named_buffers() if n in stats)
    for _, w in binary_weights(trainer.model):
        assert torch.equal(w.abs(), torch.ones_like(w))  # bnew binarizes with sign(w)


# ------------------------------------------------------------------ repeated runs, init


def test_seeds_write_mean_and_std_and_init_pairs_seeds(tmp_path, capsys):
    phase1 = tmp_path / "phase1"
    args = [str(FMNIST / "birealnet8_bnew_phase1.yaml"), "--set", "schedule.epochs=1"]
    for value in TINY:
        args += ["--set", value]
    assert main(["train", *args, "--seeds", "3,5", "--out", str(phase1)]) == 0
    summary = json.loads((phase1 / "summary.json").read_text())
    finals = [
        json.loads((phase1 / f"seed{k}/metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
        for k in (3, 5)
    ]
    assert summary["seeds"] == [3, 5] and summary["final_top1"]["values"] == finals
    assert summary["final_top1"]["mean"] == pytest.approx(statistics.fmean(finals))
    assert summary["final_top1"]["std"] == pytest.approx(statistics.stdev(finals))
    assert "2 runs (seeds 3, 5): final top-1" in capsys.readouterr().out
    w3, w5 = (load_file(phase1 / f"seed{k}/last.safetensors") for k in (3, 5))
    assert not torch.equal(w3["model.conv1.weight"], w5["model.conv1.weight"])
    # a recipe whose init names {seed} starts run k from phase-1 run k
    ste = [str(FMNIST / "birealnet8_bnew_ste.yaml"), "--set", f"init={phase1}/seed{{seed}}"]
    config = load_config(ste[0], [ste[2], *TINY, "runtime.seed=5"])
    trainer = Trainer(config)
    assert torch.equal(trainer.model.conv1.weight.detach(), w5["model.conv1.weight"])
    with pytest.raises(ConfigError, match="--runs 0"):
        parse_seeds(0, None)
    with pytest.raises(ConfigError, match="repeats a seed"):
        parse_seeds(None, "1,1")
    assert parse_seeds(3, None) == [0, 1, 2] and parse_seeds(None, None) is None


# ------------------------------------------------------------------ kill and resume in phase 2


@pytest.mark.slow
def test_multi_phase_run_killed_in_phase_2_resumes_to_identical_weights(tmp_path, teacher_file):
    """Phase 1 clamp (1 epoch) -> phase 2 BMD (3 epochs) -> freeze (1 epoch), distilled from
    a teacher; the run is killed in phase 2 and resumed: the same weights and metrics as a
    run never stopped (BMD's mirror weights u, the teacher and the phase carry-over)."""
    recipe = tmp_path / "recipe.yaml"
    teacher = teacher_file({"name": "wrn10", "method": "fp"}, 10, 1)
    recipe.write_text(
        f"""# three phases
model: {{name: birealnet8, method: bnew, bits: 32w1a}}
data: {{dataset: fashion_mnist, batch_size: 32, subset: 160, eval_subset: 32}}
optim: {{name: adam, lr: 0.01, weight_decay: 0.0}}
schedule: {{epochs: 1, lr: linear}}
latent: {{clamp: true}}
distill: {{teacher: {{model: {{name: wrn10, method: fp}}, checkpoint: {teacher}}}, loss: kl,
          alpha: 0.5, temperature: 2}}
runtime: {{device: cpu, compile: false, log_interval: 1}}
phases:
  - name: clamp
  - name: bmd
    overrides:
      optim: {{binary: {{name: bmd, beta_growth: 2.0}}}}
      latent: {{clamp: false}}
      schedule: {{epochs: 3}}
  - name: freeze
    overrides: {{model: {{bits: 1w1a}}, latent: {{clamp: false, freeze: true}}}}
"""
    )
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # the same environment (thread count) as this process: bit-identical arithmetic
    proc = subprocess.Popen(
        [sys.executable, "-m", "onebit", "train", str(recipe), "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.kill()  # in phase 2's second epoch
    proc.wait()
    lines = metrics.read_text().splitlines()
    assert len(lines) < 4, "phase 2 ended before the kill"
    assert json.loads(lines[-1])["phase"] == 1
    assert main(["train", str(recipe), "--out", str(killed), "--resume"]) == 0
    assert "resumed" in (killed / "train.log").read_text()
    assert main(["train", str(recipe), "--out", str(reference)]) == 0
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(reference / name), load_file(killed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    key = ("phase", "epoch", "train_loss", "val_loss", "val_top1", "bmd_beta")
    ref = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [[r.get(k) for k in key] for r in got] == [[r.get(k) for k in key] for r in ref]
    assert [r["phase"] for r in ref] == [0, 1, 1, 1, 2]
    assert [r.get("bmd_beta") for r in ref] == [None, 1.0, 2.0, 4.0, None]


def test_a_resumed_run_builds_its_phase_once(tmp_path, teacher_file, monkeypatch, one_thread):
    """A run stopped in phase 2 and resumed builds phase 2's model, optimizers and teacher
    once (nothing of phase 1 first, nothing twice), and ends as the run never stopped."""
    import onebit.train.techniques as techniques_module
    import onebit.train.trainer as trainer_module

    teacher = teacher_file({"name": "wrn10", "method": "fp"}, 10, 1)
    distill = f"{{teacher: {{model: {{name: wrn10, method: fp}}, checkpoint: {teacher}}}}}"
    bmd = "{name: bmd, overrides: {optim: {binary: {name: bmd}}, latent: {clamp: false}}}"
    sets = [*TINY, "init=null", "latent.clamp=true", f"distill={distill}"]
    sets += [f"phases=[{{name: clamp}}, {bmd}]", "schedule.epochs=2", "optim.lr=0.01"]
    config = load_config(FMNIST / "birealnet8_bnew_phase1.yaml", sets)
    reference, stopped = RunDir(tmp_path / "reference"), RunDir(tmp_path / "stopped")
    Trainer(config, reference).fit()

    class Stop(Exception):
        pass

    trainer = Trainer(config, stopped)
    run_epoch = trainer.run_epoch

    def stop_in_phase_2(epoch):
        if trainer.progress.phase == 1 and epoch == 1:
            raise Stop
        return run_epoch(epoch)

    trainer.run_epoch = stop_in_phase_2
    with pytest.raises(Stop):
        trainer.fit()
    calls = {"create_model": 0, "build_optimizers": 0, "load_teacher": 0}

    def count(module, name):
        original = getattr(module, name)

        def counted(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    count(trainer_module, "create_model")
    count(trainer_module, "build_optimizers")
    count(techniques_module, "load_teacher")
    resumed = Trainer(config, stopped)
    assert resumed.model is None and calls["create_model"] == 0  # fit(resume=True) builds
    resumed.fit(resume=True)
    assert calls == {"create_model": 1, "build_optimizers": 1, "load_teacher": 1}
    a, b = load_file(reference.last), load_file(stopped.last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_takes_the_data_options_its_builder_accepts(teacher_file, one_thread):
    """Like the student, a teacher gets num_classes / in_chans / input_hw from the data where
    its builder has the option: Real-to-Binary's gate is built for 32x32 inputs, a ResNet-20
    (no input_hw option) is built without it."""
    from onebit.train.distill import TeacherConfig, load_teacher

    data = {"num_classes": 10, "in_chans": 1, "input_hw": 32}
    x = torch.randn(2, 1, 32, 32)
    cases = [
        ({"name": "real2binary18", "gate": True}, 32),
        ({"name": "resnet20", "method": "fp"}, None),
    ]
    for spec, input_hw in cases:
        path = teacher_file({**spec, **({"input_hw": 32} if input_hw else {})}, 10, 1)
        teacher = load_teacher(TeacherConfig(spec, str(path)), data, 0, torch.device("cpu"))
        assert teacher(x).shape == (2, 10)
        options = teacher.onebit_spec["options"]
        assert (options["num_classes"], options["in_chans"]) == (10, 1)
        assert options.get("input_hw") == input_hw, spec["name"]  # None: not an option of it


def test_a_compiled_teacher_teaches_the_same_and_its_compile_is_timed_apart(
    tmp_path, teacher_file, one_thread
):
    """runtime.compile_teacher=true compiles the frozen teacher (torch.compile): the losses
    are the eager teacher's within float32 rounding, the first step's compiling is kept out
    of the epoch's seconds (compile_seconds); auto leaves a CPU run's teacher eager."""
    teacher = teacher_file({"name": "wrn10", "method": "fp"}, 10, 1)
    distill = f"{{teacher: {{model: {{name: wrn10, method: fp}}, checkpoint: {teacher}}}}}"
    records = {}
    for setting in ("true", "auto"):
        sets = [*TINY, f"distill={distill}", "schedule.epochs=1"]
        config = load_config(
            FMNIST / "resnet20_recu.yaml", [*sets, f"runtime.compile_teacher={setting}"]
        )
        Trainer(config, RunDir(tmp_path / setting)).fit()  # the student: never compiled (TINY)
        records[setting] = json.loads((tmp_path / setting / "metrics.jsonl").read_text())
    assert records["true"]["compile_seconds"] > 0
    assert "compile_seconds" not in records["auto"]
    assert math.isclose(records["true"]["train_loss"], records["auto"]["train_loss"], rel_tol=1e-4)
