"""A training technique defined outside the package (here, in this test module): registered
with ``onebit.register_technique``, configured under ``techniques:``, trained, resumed and
exported without a change to onebit (docs/extending.md, "A new training technique")."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

import onebit
from onebit.config import load_config
from onebit.errors import ConfigError
from onebit.train import RunDir, Technique, Trainer, load_model
from onebit.train.regularizers import binary_weights
from onebit.train.techniques import TECHNIQUES

RECU = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"
TINY = [
    "data.subset=64",
    "data.batch_size=32",
    "data.eval_subset=32",
    "eval.bn_recalibrate=1",
    "schedule.epochs=2",
    "runtime.device=cpu",
    "runtime.compile=false",
]


@dataclass
class LatentNoiseConfig:
    std: float = field(default=0.01, metadata={"min": 0.0})
    decay: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    seed: int = 0


@onebit.register_technique
class LatentNoise(Technique):
    """Gaussian noise on the binary layers' latent weights after every optimizer step:
    w <- w + std decay^e n, n ~ N(0, 1) in epoch e, drawn from the technique's own
    generator, which runs on across epochs (so its state goes into the checkpoint)."""

    name = "latent_noise"
    schema = LatentNoiseConfig
    loaded: ClassVar[list[dict]] = []  # the states load_state_dict was given (for the test)

    def start(self, trainer):
        self.weights = [w for _, w in binary_weights(trainer.model) if w.requires_grad]
        self.generator = torch.Generator().manual_seed(self.options.seed)
        self.std = self.options.std

    def epoch_start(self, trainer, epoch):
        self.std = self.options.std * self.options.decay**epoch
        return {"noise_std": self.std}

    @torch.no_grad()
    def after_step(self, trainer):
        for w in self.weights:
            noise = torch.randn(w.shape, generator=self.generator).to(w.device)
            w.add_(noise, alpha=self.std)

    def state_dict(self):
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state):
        LatentNoise.loaded.append(state)
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


NOISE = ["techniques.latent_noise.std=0.01"]


def test_the_techniques_section_is_read_through_the_registered_schema():
    config = load_config(RECU, ["techniques.latent_noise.std=0.02"])
    assert config.techniques == {"latent_noise": LatentNoiseConfig(std=0.02)}
    saved = config.to_dict()["techniques"]
    assert saved == {"latent_noise": {"std": 0.02, "decay": 0.5, "seed": 0}}
    assert load_config(RECU).techniques == {}  # the section is empty unless a recipe sets it
    with pytest.raises(
        ConfigError,
        match=r"^config key techniques\.latent_noise\.sdt is unknown\. Did you mean "
        r"techniques\.latent_noise\.std\? Keys of techniques\.latent_noise: std, decay, seed$",
    ):
        load_config(RECU, ["techniques.latent_noise.sdt=0.02"])
    with pytest.raises(
        ConfigError,
        match=r"^config key techniques\.latent_nosie is unknown\. Did you mean "
        r"techniques\.latent_noise\? Registered techniques with options there: latent_noise ",
    ):
        load_config(RECU, ["techniques.latent_nosie.std=0.02"])
    with pytest.raises(ConfigError, match=r"techniques\.latent_noise\.decay: 2\.0 is above"):
        load_config(RECU, ["techniques.latent_noise.decay=2.0"])
    with pytest.raises(ConfigError, match=r"techniques\.latent_noise: expected a mapping"):
        load_config(RECU, ["techniques.latent_noise=3"])
    # a phase may switch it off (null) or change its options
    phased = load_config(
        RECU,
        [
            *NOISE,
            "phases=[{name: a}, {name: b, overrides: {techniques: {latent_noise: null}}}]",
        ],
    )
    first, second = phased.phase_configs()
    assert first.techniques["latent_noise"].std == 0.01 and second.techniques == {
        "latent_noise": None
    }
    # false turns it off as null does (docs/extending.md), in a recipe and in a phase
    assert load_config(RECU, ["techniques.latent_noise=false"]).techniques == {"latent_noise": None}
    off = ["phases=[{name: a}, {name: b, overrides: {techniques: {latent_noise: false}}}]"]
    first, second = load_config(RECU, [*NOISE, *off]).phase_configs()
    assert first.techniques["latent_noise"].std == 0.01
    assert second.techniques == {"latent_noise": None}
    with pytest.raises(ConfigError, match=r"techniques\.latent_noise: expected a mapping"):
        load_config(RECU, ["techniques.latent_noise=true"])


def test_register_technique_refuses_a_taken_name_and_a_missing_schema():
    class Clash(Technique):
        name, section = "distill", "distill"

    with pytest.raises(ValueError, match="technique name 'distill' is taken by Distillation"):
        onebit.register_technique(Clash)

    class NoSchema(Technique):
        name = "no_schema"

    with pytest.raises(TypeError, match=r"reads techniques\.no_schema: give it a schema"):
        onebit.register_technique(NoSchema)


def test_its_hook_adds_the_noise_after_each_step(one_thread):
    """With lr 0 the optimizer leaves every weight as it is: the latent weights move by the
    technique's noise alone, drawn from a generator seeded ``seed``."""
    trainer = Trainer(load_config(RECU, [*TINY, *NOISE, "optim.lr=0"]))
    (noise,) = [t for t in trainer.techniques if isinstance(t, LatentNoise)]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_epoch(0, max_steps=1)
    generator = torch.Generator().manual_seed(0)
    latent = dict(binary_weights(trainer.model))
    assert len(latent) == len(noise.weights) > 0
    for name, p in trainer.model.named_parameters():
        if name in latent:
            expected = before[name] + 0.01 * torch.randn(p.shape, generator=generator)
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)
        else:
            assert torch.equal(p, before[name]), name


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "last.safetensors")


class Stop(Exception):
    pass


def stop_after_epoch_1(trainer: Trainer) -> None:
    """Fit ``trainer``, stopped (as by a kill) when epoch 2 would start."""
    run_epoch = trainer.run_epoch

    def first_only(epoch):
        if epoch == 1:
            raise Stop
        return run_epoch(epoch)

    trainer.run_epoch = first_only
    with pytest.raises(Stop):
        trainer.fit()


def test_it_trains_logs_resumes_with_its_state_and_exports(tmp_path, monkeypatch, one_thread):
    config = load_config(RECU, [*TINY, *NOISE])
    reference = RunDir(tmp_path / "reference")
    Trainer(config, reference).fit()
    records = [json.loads(line) for line in reference.metrics.read_text().splitlines()]
    assert [r["noise_std"] for r in records] == [0.01, 0.005]
    saved = json.loads(reference.last_json.read_text())["techniques"]
    assert list(saved) == ["latent_noise"] and len(saved["latent_noise"]["generator"]) > 0

    # stopped after epoch 1, resumed: its generator goes on where it was, so the run ends
    # bit-identical to the one never stopped
    stopped = RunDir(tmp_path / "stopped")
    stop_after_epoch_1(Trainer(config, stopped))
    at_stop = json.loads(stopped.last_json.read_text())["techniques"]["latent_noise"]
    LatentNoise.loaded.clear()
    Trainer(config, stopped).fit(resume=True)
    assert LatentNoise.loaded == [at_stop]
    a, b = _weights(reference.path), _weights(stopped.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed = [json.loads(line) for line in stopped.metrics.read_text().splitlines()]
    assert [r["noise_std"] for r in resumed] == [0.01, 0.005]

    # the same without its state: the generator starts again, the weights differ
    forgetful = RunDir(tmp_path / "forgetful")
    stop_after_epoch_1(Trainer(config, forgetful))
    monkeypatch.setattr(LatentNoise, "load_state_dict", lambda self, state: None)
    Trainer(config, forgetful).fit(resume=True)
    c = _weights(forgetful.path)
    assert not all(torch.equal(a[k], c[k]) for k in a)

    # the trained model exports as any other
    model, _ = load_model(reference.path)
    onebit.deploy.export(model, tmp_path / "m.onebit")
    deployed = onebit.deploy.load(tmp_path / "m.onebit")
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        expected, got = model(x), deployed(x)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@dataclass
class RecorderConfig:
    every: int = 1


class Recorder(Technique):
    """A technique that only records which hooks ran: every hook returns None."""

    name = "recorder"
    schema = RecorderConfig
    calls: ClassVar[list[str]] = []

    def _record(self, hook):
        Recorder.calls.append(hook)

    def start(self, trainer):
        return self._record("start")

    def optimizers(self, trainer):
        return self._record("optimizers")

    def loss_terms(self, trainer, terms):
        return self._record("loss_terms")

    def epoch_start(self, trainer, epoch):
        return self._record("epoch_start")

    def before_step(self, trainer):
        return self._record("before_step")

    def after_step(self, trainer):
        return self._record("after_step")

    def before_eval(self, trainer, epoch):
        return self._record("before_eval")

    def state_dict(self):
        return self._record("state_dict")

    def load_state_dict(self, state):
        return self._record("load_state_dict")

    def end(self, trainer):
        return self._record("end")


@pytest.fixture
def recorder():
    onebit.register_technique(Recorder)
    Recorder.calls.clear()
    yield Recorder.calls
    TECHNIQUES.pop(Recorder.name)


def test_hooks_that_return_none_have_nothing_of_their_own(recorder, tmp_path, one_thread):
    """None from a hook: no metrics values, no optimizers, the loss terms unchanged, no
    state to save; the run trains, resumes and exports as one without the technique."""
    config = load_config(RECU, [*TINY, "techniques.recorder.every=1"])
    run = RunDir(tmp_path / "run")
    stop_after_epoch_1(Trainer(config, run))
    assert [c for c in recorder if c not in ("before_step", "after_step")] == [
        "start",
        "optimizers",
        "loss_terms",
        "epoch_start",
        "before_eval",
        "state_dict",
    ]
    assert "before_step" in recorder and "after_step" in recorder
    assert json.loads(run.last_json.read_text())["techniques"] == {}
    recorder.clear()
    Trainer(config, run).fit(resume=True)
    assert "load_state_dict" not in recorder and recorder[-1] == "end"
    assert "epoch_start" in recorder and "before_eval" in recorder
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    model, _ = load_model(run.path)
    onebit.deploy.export(model, tmp_path / "m.onebit")
    assert onebit.deploy.load(tmp_path / "m.onebit").meta["model"]["name"] == "resnet20"
