"""Config files: every recipe in configs/ loads; overrides; every bad key, type or value is a
ConfigError naming the key path, printed by the CLI as one line with exit status 2."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onebit.cli import main
from onebit.config import Config, config_from_dict, load_config
from onebit.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FP = ROOT / "configs/fmnist/resnet20_fp.yaml"
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))
FOLDERS = {
    "fmnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "imagenet": "imagefolder",
}


def test_the_recipes_exist():
    names = {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}
    for dataset in ("cifar10", "cifar100", "fmnist"):
        for recipe in (
            "resnet20_recu",
            "resnet20_irnet",
            "vgg_small_irnet",
            "resnet18_cifar_irnet",
        ):
            assert f"{dataset}/{recipe}.yaml" in names
    assert "fmnist/resnet20_fp.yaml" in names
    for recipe in (
        "birealnet18_bireal",
        "birealnet34_bireal",
        "birealnet50_bireal",
        "resnet18_irnet",
        "resnet34_irnet",
        "resnet18_irnet_1w32a",
        "resnet34_irnet_1w32a",
        "resnet18_recu",
        "firnet18_recu",
        "resnet18_irnet_mmcls",
        "birealnet18_bireal_mmcls",
    ):
        assert f"imagenet/{recipe}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_loads_and_is_named_after_its_content(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert FOLDERS[path.parent.name] == config.data.dataset
    # <model>_<method>, then an optional variant: birealnet20_bnew_bop_kd, wrn22_fp; or
    # <model>_best, the best recipe onebit knows for that model on that dataset, any method
    recipe = f"{config.model['name']}_{config.model['method']}"
    best = path.stem == f"{config.model['name']}_best"
    assert best or path.stem == recipe or path.stem.startswith(f"{recipe}_")
    text = path.read_text()
    assert text.startswith("# Source: ")
    assert re.search(r"^# Published top-1: ", text, re.M)


def test_recipe_values_match_the_official_commands():
    recu = load_config(ROOT / "configs/cifar10/resnet20_recu.yaml")
    assert (recu.optim.lr, recu.optim.weight_decay, recu.data.batch_size) == (0.1, 1e-4, 128)
    assert (recu.schedule.epochs, recu.schedule.lr, recu.quant.tau) == (600, "cos", [0.85, 0.99])
    irnet = load_config(ROOT / "configs/cifar10/resnet20_irnet.yaml")
    assert (irnet.schedule.epochs, irnet.quant.ede.t_min, irnet.quant.ede.t_max) == (400, 1e-3, 10)
    vgg = load_config(ROOT / "configs/cifar100/vgg_small_irnet.yaml")
    assert (vgg.optim.lr, vgg.schedule.epochs, vgg.model["num_classes"]) == (0.007, 300, 100)
    fp = load_config(ROOT / "configs/fmnist/resnet20_fp.yaml")
    assert (fp.model["method"], fp.model["in_chans"], fp.schedule.epochs) == ("fp", 1, 40)


def test_imagenet_recipes_match_the_official_code():
    def load(name):
        return load_config(ROOT / "configs/imagenet" / f"{name}.yaml")

    bireal = load("birealnet18_bireal")  # Bi-Real train.py defaults
    assert (bireal.optim.name, bireal.optim.lr, bireal.optim.weight_decay) == ("adam", 1e-3, 0.0)
    assert (bireal.schedule.lr, bireal.schedule.epochs, bireal.data.batch_size) == (
        "linear",
        256,
        512,
    )
    assert bireal.loss.label_smoothing == 0.1
    bireal50 = load("birealnet50_bireal")  # BiReal_50/train.py: half the batch, half the lr
    assert (bireal50.optim.lr, bireal50.data.batch_size) == (5e-4, 256)
    irnet = load("resnet18_irnet")  # 0.2 -> 0.8 over 2500 it, x0.1 at 18750/37500/56250 of 62500
    assert irnet.model["structure"] == "bireal" and irnet.optim.nesterov
    steps = 1_281_167 // irnet.data.batch_size  # ImageNet-1k training images, full batches
    assert steps * irnet.schedule.epochs == 62500
    assert [m * steps for m in irnet.schedule.milestones] == [18750, 37500, 56250]
    assert irnet.optim.lr * irnet.schedule.warmup_from == pytest.approx(0.2)
    assert (irnet.schedule.warmup_steps, irnet.data.color_jitter) == (2500, [0.2, 0.2, 0.2, 0.1])
    assert (irnet.quant.ede.t_min, irnet.quant.ede.t_max) == (0.1, 10.0)
    mmcls = load("resnet18_irnet_mmcls")  # seed 002: 8 x 128, lr 0.4, EDE over 100 epochs
    assert (mmcls.data.batch_size, mmcls.optim.lr, mmcls.runtime.seed) == (1024, 0.4, 166)
    assert mmcls.schedule.milestones == [30, 60, 90] and mmcls.schedule.epochs == 100
    assert load("birealnet18_bireal_mmcls").data.batch_size == 8 * 64  # its log: 64 per GPU
    firnet = load("firnet18_recu")
    assert (firnet.optim.lr, firnet.schedule.epochs, firnet.data.eval_batch_size) == (0.1, 200, 256)
    assert firnet.quant.tau == [0.85, 0.99] and firnet.data.crop_scale == [0.08, 1.25]


def test_overrides_and_round_trip():
    config = load_config(
        ROOT / "configs/fmnist/resnet20_recu.yaml",
        [
            "optim.lr=0.05",
            "data.subset=100",
            "model.bits=1w32a",
            "quant.ede.t_min=1e-2",
            "runtime.compile=false",
        ],
    )
    assert config.optim.lr == 0.05 and config.data.subset == 100
    assert config.model["bits"] == "1w32a" and config.quant.ede.t_min == 0.01
    assert config.runtime.compile is False
    assert config_from_dict(config.to_dict()) == config
    assert yaml.safe_load(yaml.safe_dump(config.to_dict())) == config.to_dict()


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet20}\noptim: {weight_decay: 1e-4}\n")
    assert load_config(path).optim.weight_decay == 1e-4


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.lrr=0.1"], r"config key optim.lrr is unknown. Did you mean optim.lr\?"),
        (["optim.lr=fast"], r"config key optim.lr: expected a number, got 'fast'"),
        (["data.batch_size=true"], r"config key data.batch_size: expected an integer, got True"),
        (["data.batch_size=0"], r"config key data.batch_size: 0 is below the minimum 1"),
        (["schedule.lr=exp"], r"config key schedule.lr: 'exp' is not one of cos, step"),
        (["quant.tau=[0.9]"], r"config key quant.tau: expected 2 values"),
        (["schedule.warmup_from=2"], r"config key schedule.warmup_from: 2.0 is above the maximum"),
        (["data.color_jitter=[0.2]"], r"config key data.color_jitter: expected 4 values"),
        (["runtime.sync_bn=often"], r"config key runtime.sync_bn: expected true or false"),
        (["runtime.compile=maybe"], r"config key runtime.compile: 'maybe' is not one of auto"),
        (["data.dataset=mnist"], r"config key data.dataset: unknown dataset 'mnist'"),
        (["model.depth=3"], r"config key model.depth: model 'resnet20' has no option 'depth'"),
        (["model.name=resnet2"], r"config key model.name: unknown model 'resnet2'"),
        (["distill.loss=kl"], r"config key distill.teacher is missing"),
        (["optim"], r"--set 'optim' is not KEY.PATH=VALUE"),
        (["optim.lr.x=1"], r"--set 'optim.lr.x=1': config key optim.lr is not a section"),
        (["extra.key=1"], r"config key extra is unknown"),
    ],
)
def test_bad_keys_types_and_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/fmnist/resnet20_recu.yaml", overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: resnet20\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+ is not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
    bad.write_text("data: {dataset: cifar10}\n")
    with pytest.raises(ConfigError, match="config key model is missing"):
        load_config(bad)
    bad.write_text("model: {bits: 1w1a}\n")
    with pytest.raises(ConfigError, match=r"config key model\.name is missing"):
        load_config(bad)


def test_cli_bad_config_is_one_line_exit_2(capsys):
    assert (
        main(["train", str(ROOT / "configs/fmnist/resnet20_fp.yaml"), "--set", "optim.lr=x"]) == 2
    )
    err = capsys.readouterr().err
    assert err == "onebit: error: config key optim.lr: expected a number, got 'x' (str)\n"


def test_cli_subprocess_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "onebit", "train", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("onebit: error: cannot read config")


# ------------------------------------------------------------------ hostile input


BILLION_LAUGHS = """\
model:
  name: resnet20
  method: &a ["x","x","x","x","x","x","x","x","x"]
  bits: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  block_act: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  stem_act: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  downsample: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  num_classes: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
optim: {lr: *f}
"""


@pytest.mark.parametrize(
    "content,expected",
    [
        (BILLION_LAUGHS.encode(), "holds more than 100,000 values"),
        (b"model: {name: resnet20}\n\xff\xfe", "is not UTF-8 text"),
        (b"model: " + b"[" * 20000, "nested too deeply"),
        (b"model: " + b"[" * 100 + b"1" + b"]" * 100, "nested too deeply"),
        (b"model: {name: resnet20, num_classes: abc}", "config key model.num_classes"),
        (b"model: {name: resnet20}\nruntime: {seed: -1}", "runtime.seed: -1 is below"),
        (b"model: {name: resnet20}\nruntime: {seed: 1180591620717411303424}", "is above"),
        (b"model: {name: resnet20}\nruntime: {device: meta}", "runtime.device: 'meta' is not"),
        (b"model: {name: resnet20}\nruntime: {device: mps}", "runtime.device: 'mps' is not"),
        (b"model: {name: resnet20}\noptim: {lr: 1e308}", "optim.lr: 1e+308 is above"),
    ],
)
def test_hostile_configs_are_short_one_line_errors(content, expected, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    args = ["train", str(path), "--set", "data.dataset=fashion_mnist", "--out", str(tmp_path)]
    assert main([*args, "--set", "runtime.device=cpu"] if b"device" not in content else args) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and len(err) < 2100, err[:300]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["summary", "resnet20", "--opt", "num_classes=-1"], "num_classes -1 is not a positive"),
        (["summary", "resnet20", "--opt", "num_classes=abc"], "num_classes 'abc' is not a posi"),
        (["train", str(FP), "--set", "model.in_chans=0"], "model.in_chans: in_chans 0 is not a"),
        (["summary", "resnet20", "--opt", "x=" + "[" * 20000], "nested too deeply"),
        (["train", str(FP), "--set", "model.num_classes=" + "[" * 20000], "nested too deeply"),
    ],
)
def test_hostile_options_are_one_line_errors(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err[:300]


@pytest.mark.parametrize("argv", [["bench", "--threads", "-1"], ["bench", "--batch", "-2"]])
def test_bench_rejects_non_positive_numbers(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and "positive" in capsys.readouterr().err


def test_messages_name_a_value_without_repeating_all_of_it(capsys):
    huge = "[" + ",".join(["1"] * 50_000) + "]"
    assert main(["train", str(FP), "--set", f"optim.lr={huge}"]) == 2
    err = capsys.readouterr().err
    assert "config key optim.lr: expected a number" in err and len(err) < 300, err[:400]


# ------------------------------------------------------------------ every recipe's values

RESOLVED = Path(__file__).resolve().parent / "data/resolved_configs.jsonl"


def _resolved(path: Path) -> dict:
    config = load_config(path)
    phases = [p.to_dict() for p in config.phase_configs()] if config.phases else []
    return json.loads(json.dumps({"config": config.to_dict(), "phases": phases}, default=str))


def test_every_config_loads_to_its_recorded_values():
    """Each configs/**/*.yaml reads to exactly the values recorded in tests/data (every key,
    defaults included, and each phase's merged config): a change to the schema or the
    validator cannot move a recipe silently. After changing a recipe on purpose, rewrite the
    record: ONEBIT_UPDATE_RESOLVED=1 python -m pytest tests/test_config.py -k recorded."""
    root = Path(__file__).resolve().parent.parent
    files = sorted(root.glob("configs/*/*.yaml"))
    current = {str(p.relative_to(root)): _resolved(p) for p in files}
    if os.environ.get("ONEBIT_UPDATE_RESOLVED"):
        lines = [
            json.dumps({"file": k, **v}, sort_keys=True, separators=(",", ":"))
            for k, v in sorted(current.items())
        ]
        RESOLVED.write_text("\n".join(lines) + "\n")
    recorded = {}
    for line in RESOLVED.read_text().splitlines():
        entry = json.loads(line)
        recorded[entry.pop("file")] = entry
    assert sorted(current) == sorted(recorded), "a config was added or removed: update the record"
    for name, values in current.items():
        assert values == recorded[name], f"{name} reads to other values than recorded"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "optim.binary.beta=1",
            r"^config key optim\.binary\.beta is unknown\. Keys of optim\.binary \(name 'bop'\): "
            r"name, gamma, threshold$",
        ),
        (
            "optim.binary.lr=0.1",
            r"^config key optim\.binary\.lr: optim\.binary\.name 'bop' has no option lr; its "
            r"options are: name, gamma, threshold$",
        ),
        ("optim.momentum=0.5", r"optim\.name 'adam' has no option momentum"),
        ("schedule.gamma=0.5", r"schedule\.lr 'linear' has no option gamma"),
        ("data.image_size=64", r"data\.dataset 'fashion_mnist' has no option image_size"),
    ],
)
def test_each_kind_accepts_its_own_options_only(override, message):
    # Bop has no Adam step size, Adam no momentum, a linear schedule no milestones' gamma,
    # Fashion-MNIST no image size: each used to pass silently
    path = Path(__file__).resolve().parent.parent / "configs/fmnist/birealnet8_bnew_bop.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])
    # the same keys at their defaults, as a resolved config lists them, read back
    assert load_config(path, ["optim.momentum=0.9", "data.image_size=224"]).optim.name == "adam"


def test_a_phase_switching_kind_drops_the_old_kinds_options():
    data = {
        "model": {"name": "resnet20"},
        "schedule": {"lr": "step", "milestones": [2], "gamma": 0.5},
        "phases": [{"name": "a"}, {"name": "b", "overrides": {"schedule": {"lr": "const"}}}],
    }
    first, second = config_from_dict(data).phase_configs()
    assert (first.schedule.milestones, first.schedule.gamma) == ([2], 0.5)
    assert (second.schedule.lr, second.schedule.milestones, second.schedule.gamma) == (
        "const",
        [],
        0.1,
    )


def test_the_validation_split_seed_has_the_seed_range():
    """data.val_split_seed seeds a torch generator, as runtime.seed does: one range (it was
    unbounded above, a torch overflow traceback)."""
    with pytest.raises(
        ConfigError,
        match=r"^config key data\.val_split_seed: 99999999999999999999 is above the maximum "
        r"9223372036854775807$",
    ):
        load_config(FP, ["data.val_split=64", "data.val_split_seed=99999999999999999999"])
    assert load_config(FP, ["data.val_split=64", f"data.val_split_seed={2**63 - 1}"])


def test_load_config_names_arguments_of_the_wrong_kind():
    recipe = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"
    for args, message in (
        (({},), "takes the path of a YAML file, got dict; for a dict use"),
        ((None,), "takes the path of a YAML file, got NoneType"),
        ((recipe, "optim.lr=0.5"), "takes a list of 'key.path=value' strings, got 'optim"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(*args)
    assert load_config(recipe, ("optim.lr=0.5",)).optim.lr == 0.5
