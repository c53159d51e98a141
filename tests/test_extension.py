"""The user's own module, outside the package, with a scheduled binarizer, a method and a
training technique; a recipe that names it in ``imports:``; then the command line trains,
resumes, exports, evaluates and deploys with them in fresh processes, with no change to
onebit (docs/extending.md)."""

import json
import re
import textwrap

import pytest

from conftest import onebit_cli
from onebit.config import config_from_dict
from onebit.errors import ConfigError

USER_MODULE = '''
"""my_bnn: what a researcher writes in their own file."""
from dataclasses import dataclass, field

import torch

import onebit
from onebit.train import Technique
from onebit.train.regularizers import binary_weights


@dataclass
class Sharpness:
    start: float = field(default=1.0, metadata={"min": 0.0})
    end: float = 4.0


@dataclass
class SharpnessOptions:
    sharpness: Sharpness = field(default_factory=Sharpness)


def schedule(epoch, epochs, options):
    s = options.sharpness
    return {"beta": s.start + (s.end - s.start) * epoch / epochs}


@onebit.register_binarizer(
    "act", "soft_sign", state={"beta": 1.0}, schedule=schedule, log={"beta": "sharp_beta"},
    options=SharpnessOptions,
)
def soft_sign(x, beta=1.0):
    """Sign with a sharpening tanh surrogate.

    forward: sign(x); backward: g * beta * (1 - tanh(beta x)^2). Source: the user.
    """
    soft = torch.tanh(beta * x)
    return onebit.quant.sign(x) + (soft - soft.detach())


onebit.register_method("soft", "soft_sign", "xnor", "hardtanh", "the user's method")


@dataclass
class ShrinkConfig:
    factor: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})


@onebit.register_technique
class LatentShrink(Technique):
    """w <- factor w after every step; counts its steps (checkpointed state)."""

    name = "latent_shrink"
    schema = ShrinkConfig

    def start(self, trainer):
        self.weights = [w for _, w in binary_weights(trainer.model) if w.requires_grad]
        self.steps = 0

    @torch.no_grad()
    def after_step(self, trainer):
        torch._foreach_mul_(self.weights, self.options.factor)
        self.steps += 1

    def epoch_start(self, trainer, epoch):
        return {"shrink_steps": self.steps}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]
'''

RECIPE = """
imports: [my_bnn]
model: {name: resnet20, method: soft, bits: 1w1a}
data: {dataset: fashion_mnist, batch_size: 32, eval_batch_size: 64, subset: 64,
       eval_subset: 64, augment: none}
optim: {name: adam, lr: 0.01, weight_decay: 0.0}
schedule: {epochs: 2, lr: linear}
quant: {sharpness: {start: 1.0, end: 5.0}}
techniques: {latent_shrink: {factor: 0.99}}
runtime: {device: cpu, compile: false}
"""


@pytest.mark.slow
def test_user_module_trains_resumes_exports_and_deploys_from_the_command_line(tmp_path):
    (tmp_path / "my_bnn.py").write_text(textwrap.dedent(USER_MODULE))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    done = onebit_cli(tmp_path, "train", "recipe.yaml", "--out", "run")
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["sharp_beta"] for r in records] == [1.0, 3.0]  # its schedule, logged
    assert [r["shrink_steps"] for r in records] == [0, 2]  # the technique ran every step
    # a fresh process resumes the finished run: the recipe imports the module again
    again = onebit_cli(tmp_path, "train", "recipe.yaml", "--out", "run", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resumed" in (tmp_path / "run/train.log").read_text()
    # the run names the module; it runs only when the user allows it
    refused = onebit_cli(tmp_path, "export", "run", "m.onebit")
    assert refused.returncode == 2 and "--import my_bnn if you trust it" in refused.stderr
    # export (BN re-estimation, the C runtime) and evaluation of the graph file
    exported = onebit_cli(tmp_path, "export", "run", "m.onebit", "--import", "my_bnn")
    assert exported.returncode == 0, exported.stderr
    wrote, figures = exported.stdout.splitlines()[-2:]
    # ResNet-20: 3 stages x 3 blocks x 2 binary 3x3 convs, the user's sign-like soft_sign packed,
    # each conv's BatchNorm folded in
    packed_layers = "18 packed binary layers, 0 other binary-weight layers, 18 BatchNorms folded"
    assert wrote.startswith("wrote m.onebit: ") and packed_layers in wrote, wrote
    _, recalibrated, packed = re.findall(r"([\d.]+)% ", figures)
    assert packed == recalibrated, figures  # the runtime computes what the model does
    # the file is the network: it runs with the user's module gone, no --import
    (tmp_path / "my_bnn.py").unlink()
    evaluated = onebit_cli(tmp_path, "eval", "m.onebit")
    assert evaluated.returncode == 0, evaluated.stderr
    # the whole Fashion-MNIST test split, through the runtime; the export's figure kept
    assert "(10000 images, m.onebit, C runtime, kernel " in evaluated.stdout, evaluated.stdout
    at_export = f"the trained model at export: {recalibrated}% on 64 images"
    assert at_export in evaluated.stdout, evaluated.stdout
    # without the module there, the command line names what is missing in one line
    missing = onebit_cli(tmp_path, "export", "run", "m2.onebit", "--import", "my_bnn")
    assert missing.returncode == 2
    assert "--import: cannot import 'my_bnn'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_imports_are_module_names_only():
    for bad, message in [
        ("my_bnn", "imports: expected a list of module names"),
        (["../evil"], "is not a module name"),
        (["no_such_module_here"], "a config: cannot import 'no_such_module_here'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"imports": bad, "model": {"name": "resnet20"}}, allowed=bad)
    assert config_from_dict({"imports": ["json"], "model": {"name": "resnet20"}}).imports == [
        "json"
    ]
