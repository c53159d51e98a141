"""The command line: listing, summary, and one-line errors with exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from onebit.cli import main

ROOT = Path(__file__).resolve().parent.parent

RECU = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_recu.yaml"


def test_models_lists_names_with_filter(capsys):
    assert main(["models", "firnet*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["firnet18", "firnet18_cifar", "firnet20"]


def test_summary_table_and_totals(capsys):
    assert main(["summary", "resnet20", "--method", "fp", "--in-chans", "1"]) == 0
    out = capsys.readouterr().out
    assert "stages.0.0.conv1" in out and "head.fc" in out
    assert "params: 269,562 (0 binary)" in out


def test_summary_counts_one_bit_per_binary_weight(capsys):
    assert main(["summary", "vgg_small", "--bits", "1w1a"]) == 0
    out = capsys.readouterr().out
    binary = 128 * 128 * 9 + 128 * 256 * 9 + 256 * 256 * 9 + 256 * 512 * 9 + 512 * 512 * 9
    other = 4_660_106 - binary
    scales = 2 * 4 * (128 + 256 + 256 + 512 + 512)  # fp32 out_scale + out_bias per binary conv
    # a BatchNorm is an fp32 scale and shift per channel in the graph file: as many bytes as
    # its weight and bias, counted in ``other`` (no running statistics, no batch count)
    deployed = binary // 8 + 4 * other + scales
    assert f"memory as deployed: {deployed:,} bytes" in out


def test_summary_has_bops_and_flops_columns(capsys):
    assert main(["summary", "birealnet18", "--input", "3x32x32"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[4:6] == ["BOPs", "FLOPs"]
    # one binary 3x3 conv per block; stages at 8x8, 4x4, 2x2, 1x1 for a 32x32 input
    bops, cin = 0, 64
    for hw, width in ((8, 64), (4, 128), (2, 256), (1, 512)):
        for _ in range(4):
            bops += hw * hw * cin * width * 9
            cin = width
    assert f"per image (3x32x32): BOPs {bops:,}" in out
    assert "memory as deployed" in out


def test_ops_prints_conv_layers_and_paper_totals(capsys):
    assert main(["ops", "reactnet_a"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "type", "bits", "output", "BOPs", "FLOPs"]
    assert lines[2].startswith("conv1 ") and "10,838,016" in lines[2]
    assert not any(line.startswith("blocks.0.bn1") for line in lines)  # MAC-free layers left out
    assert "BOPs 4,816,896,000" in out and "OPs = BOPs/64 + FLOPs = 8.71e+07" in out


def test_input_size_of_a_model_built_for_another_side(capsys):
    assert main(["summary", "vgg_small", "--opt", "input_hw=16"]) == 0  # its size by default
    assert "per image (3x16x16)" in capsys.readouterr().out
    assert main(["ops", "resnet20", "--in-chans", "5", "--input", "5x32x32"]) == 0


def test_ops_of_an_fp_twin_has_no_bops(capsys):
    assert main(["ops", "resnet18", "--method", "fp", "--input", "3x32x32"]) == 0
    assert "BOPs 0 (0)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["models", "zzz*"], "no model matches 'zzz*'"),
        (["summary", "resnet2"], "unknown model 'resnet2'. Did you mean 'resnet20'"),
        (["summary", "resnet20", "--bits", "2w2a"], "bits '2w2a' is not one of"),
        (["summary", "resnet20", "--input", "3x32"], "--input '3x32' is not a shape"),
        (["summary", "resnet20", "--opt", "depth=3"], "has no option 'depth'"),
        (["ops", "resnet18", "--opt", "structure=bireel"], "unknown structure 'bireel'"),
        (["ops", "real2binary18", "--input", "3x64x64"], "option input_hw"),
        (
            ["summary", "resnet20", "--input", "5x32x32"],
            "--input 5x32x32 has 5 channels but resnet20 takes 3 (--in-chans 3): give --input "
            "3x32x32, or --in-chans 5",
        ),
        (
            ["ops", "firnet20", "--in-chans", "1", "--input", "3x28x28"],
            "--input 3x28x28 has 3 channels but firnet20 takes 1 (--in-chans 1): give --input "
            "1x28x28, or --in-chans 3",
        ),
        (["ops", "resnet20", "--in-chans", "0"], "in_chans 0 is not a positive whole number"),
        (["summary", "resnet20", "--num-classes", "-1"], "num_classes -1 is not a positive"),
        (
            ["ops", "birealnet18", "--input", "3x8x8"],
            "birealnet18 cannot run on a 3x8x8 input (Given input size: (128x1x1). Calculated "
            "output size: (128x0x0). Output size is too small); give another --input",
        ),
        (["bench", "--models", "resnet2"], "unknown model 'resnet2'"),  # before any timing
        (["bench", "--kernel", "nope"], "unknown kernel 'nope'"),
        (
            ["summary", "vgg_small", "--input", "3x16x16"],
            "--input 3x16x16 is 16x16 but vgg_small is built for 32x32 (option input_hw 32): "
            "give --input 3x32x32, or --opt input_hw=16",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("onebit: error: ") and message in err
    assert err.count("\n") == 1


def test_console_script_runs_as_module():
    proc = subprocess.run(
        [sys.executable, "-m", "onebit", "summary", "resnet2"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_bare_onebit_prints_help_and_version(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("onebit 0.")


def test_models_descriptions_are_whole_sentences(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 10 and all(line.rstrip().endswith((".", ")")) for line in lines)


def test_config_values_get_their_key_and_a_suggestion(tmp_path, capsys):
    recipe = str(RECU)
    for override, expected in (
        ("model.method=recuu", "config key model.method: unknown method 'recuu'. Did you mean"),
        ("optim.name=sgdd", "config key optim.name: 'sgdd' is not one of sgd, adam, adamw; did"),
        ("model.bits=2w2a", "config key model.bits: bits '2w2a' is not one of"),
    ):
        assert main(["train", recipe, "--set", override, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--seeds", "-1"], "--seeds: config key runtime.seed: -1 is below the minimum 0"),
        (
            ["--seeds", "0,99999999999999999999"],
            "--seeds: config key runtime.seed: 99999999999999999999 is above the maximum "
            "9223372036854775807",
        ),
        (
            ["--set", "runtime.seed=99999999999999999999"],
            "config key runtime.seed: 99999999999999999999 is above the maximum "
            "9223372036854775807",
        ),
        (["--set", "runtime.seed=-1"], "config key runtime.seed: -1 is below the minimum 0"),
        (["--runs", "0"], "--runs 0: give a number of runs from 1 to 1000"),
        (["--runs", "99999999999"], "--runs 99999999999: give a number of runs from 1 to 1000"),
    ],
)
def test_seeds_out_of_range_are_one_line_before_any_run(argv, message, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", str(RECU), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"onebit: error: {message}\n"
    assert not out.exists()  # checked before the run directory is made


def test_the_largest_seed_trains(tmp_path, one_thread):
    # every seeding call (torch.manual_seed, the loaders' SeedSequence) takes runtime.seed's
    # whole range
    tiny = ["data.subset=32", "data.batch_size=32", "data.eval_subset=32", "schedule.epochs=1"]
    sets = [arg for item in tiny for arg in ("--set", item)]
    out = tmp_path / "r"
    assert main(["train", str(RECU), *sets, "--seeds", str(2**63 - 1), "--out", str(out)]) == 0
    assert (out / f"seed{2**63 - 1}" / "last.safetensors").is_file()


def test_a_failing_module_a_file_for_a_folder_and_nan_are_one_line(tmp_path, capsys, monkeypatch):
    """--import of a module whose own code fails says where (file, line), --out naming a file
    says so, NaN is no config value: one line each, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_syntax.py").write_text("def (\n")
    (tmp_path / "raises_at_import.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    (tmp_path / "a_file").write_text("")
    recipe = str(ROOT / "configs/fmnist/resnet20_recu.yaml")
    cases = [
        (
            ["models", "--import", "broken_syntax"],
            "--import: importing 'broken_syntax' failed: SyntaxError: invalid syntax "
            f"({tmp_path / 'broken_syntax.py'}, line 1); fix the module",
        ),
        (
            ["models", "--import", "raises_at_import"],
            "--import: importing 'raises_at_import' failed: RuntimeError: boom "
            f"({tmp_path / 'raises_at_import.py'}, line 2); fix the module",
        ),
        (
            ["train", recipe, "--out", "a_file/run"],
            "cannot write a_file/run/.lock: a_file is a file, not a folder",
        ),
        (["train", recipe, "--set", "optim.lr=.nan"], "config key optim.lr: expected a number"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("onebit: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
