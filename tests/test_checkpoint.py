"""Damaged checkpoints: every kind of bad state in a run's files is a one-line error from
`onebit eval`, `onebit export` and `--resume`, never a traceback or a silent wrong model,
and a refused --resume leaves the run directory as it was."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onebit.cli import main
from onebit.errors import OutputError
from onebit.train import RunDir
from onebit.train.checkpoint import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RECU = ROOT / "configs/fmnist/resnet20_recu.yaml"
TINY = [
    "data.subset=64",
    "data.batch_size=32",
    "data.eval_subset=32",
    "runtime.device=cpu",
    "schedule.epochs=1",
]
SETS = [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(RECU), *SETS, "--out", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def _copy(trained, run: Path) -> Path:
    """A copy of the trained run at ``run``, without best.safetensors."""
    run.mkdir(parents=True)
    for f in trained.iterdir():
        if f.is_file() and f.name != "best.safetensors":
            (run / f.name).write_bytes(f.read_bytes())
    return run


def _damaged(trained, tmp_path, edit) -> Path:
    """A copy of the run whose last (and only) checkpoint has its state edited by ``edit``."""
    run = _copy(trained, tmp_path / "run")
    tensors, state = read_checkpoint(run / "last.safetensors")
    state = copy.deepcopy(state)
    tensors = edit(state, tensors) or tensors
    save_checkpoint(run / "last.safetensors", tensors, state)
    return run


def _contents(run: Path) -> dict[str, bytes]:
    """Every file of ``run`` (the lock file aside) and its bytes."""
    return {f.name: f.read_bytes() for f in run.iterdir() if f.is_file() and f.name != ".lock"}


def _set(path: str, value):
    def edit(state, tensors):
        node, *keys = state, *path.split(".")
        for key in keys[:-1]:
            node = node[key]
        if value is KeyError:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value

    return edit


def _momentum_of_the_wrong_shape(state, tensors):
    key = next(k for k in tensors if k.startswith("optim.0.") and k.endswith("momentum_buffer"))
    tensors[key] = torch.zeros(3)
    return tensors


def _bits_edited(state, tensors):
    state["config"]["model"]["bits"] = "1w32a"


@pytest.mark.parametrize(
    "edit,expected,commands",
    [
        (_set("progress.phase", "x"), "phase", ("eval", "resume")),
        (_set("progress.phase", 5), "phase", ("eval", "resume")),
        (_set("config.model.num_classes", "x"), "config", ("eval", "resume")),
        (
            _set("config.model.in_chans", -3),
            "model.in_chans: in_chans -3 is not a positive",
            ("eval",),
        ),
        (_set("rng", KeyError), "no valid rng", ("resume",)),
        (_set("rng.cpu", "!!!not base64"), "RNG state is damaged", ("resume",)),
        (_set("rng.cpu", "AAAA"), "RNG state is damaged", ("resume",)),
        (
            _set("optimizers", [{"state": {"abc": {}}, "param_groups": []}]),
            "optimizer",
            ("resume",),
        ),
        (_set("progress.epoch", -1), "(epoch -1 is not between 0 and schedule", ("resume",)),
        (_set("progress.epoch", 2), "(epoch 2 is not between 0 and schedule", ("resume",)),
        (_set("progress.epoch", 0.5), "(epoch 0.5 is not an integer)", ("resume",)),
        (_set("progress.epoch", True), "(epoch True is not an integer)", ("resume",)),
        (_set("progress.step", -4), "(step -4 is negative)", ("resume",)),
        (_set("progress.step", KeyError), "(step None is not an integer)", ("resume",)),
        (
            _set("progress.best_epoch", 3),
            "(best_epoch 3 is not between 0 and epoch 1)",
            ("resume",),
        ),
        (_set("progress.best_top1", "x"), "(best_top1 x is not a number)", ("resume",)),
        (
            _set("progress.best_top1", float("nan")),
            "best_top1 nan is not a percentage",
            ("resume",),
        ),
        (_set("progress.lr", 0.1), "(unknown key 'lr')", ("resume",)),
        (_set("optimizers", "x"), "no valid optimizers", ("resume",)),
        (_momentum_of_the_wrong_shape, "momentum_buffer of shape (3,)", ("resume",)),
        (
            _bits_edited,
            "was trained as 1w1a, but the stored config builds it as 1w32a",
            ("eval",),
        ),
    ],
)
def test_damaged_state_is_a_one_line_error(trained, tmp_path, capsys, edit, expected, commands):
    run = _damaged(trained, tmp_path, edit)
    files = _contents(run)
    for command in commands:
        if command == "eval":
            argv = ["eval", str(run / "last.safetensors")]
        else:
            argv = ["train", str(RECU), *SETS, "--out", str(run), "--resume"]
        assert main(argv) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("onebit: error:") and err.count("\n") == 1, err
        assert expected in err, err
        assert _contents(run) == files, "the run directory changed"


def test_a_flipped_bit_in_the_weights_is_a_one_line_error(trained, tmp_path, capsys):
    """The SHA-256 of the tensor bytes in the header: a bit flipped anywhere in them (a disk,
    a copy) stops eval and --resume in one line, the run directory untouched; a checkpoint
    written without the digest (before it existed, or by another tool) still loads."""
    from onebit.train.checkpoint import DATA_SHA256

    run = _copy(trained, tmp_path / "run")
    raw = bytearray((run / "last.safetensors").read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:start])["__metadata__"][DATA_SHA256]
    for at in (start, (start + len(raw)) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[at] ^= 0x10
        (run / "last.safetensors").write_bytes(flipped)
        files = _contents(run)
        for argv in (
            ["eval", str(run / "last.safetensors")],
            ["train", str(RECU), *SETS, "--out", str(run), "--resume"],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "last.safetensors is damaged: its tensors are not the bytes written" in err
            assert err.count("\n") == 1
            assert _contents(run) == files
    tensors, state = read_checkpoint(trained / "last.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare), metadata={"onebit": json.dumps(state)})
    assert read_checkpoint(bare)[1]["progress"] == state["progress"]


@pytest.mark.parametrize(
    "metadata,expected",
    [
        ({"onebit": "[1, 2]"}, "not a JSON object"),
        ({"onebit": "[" * 20000 + "]" * 20000}, "not valid JSON"),
        ({"onebit": "{"}, "not valid JSON"),
        ({"onebit": json.dumps({"format": [1]})}, "checkpoint format"),
    ],
)
def test_damaged_metadata_is_a_one_line_error(trained, tmp_path, capsys, metadata, expected):
    file = tmp_path / "x.safetensors"
    save_file(load_file(trained / "last.safetensors"), str(file), metadata=metadata)
    assert main(["eval", str(file)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_eval_of_a_checkpoint_file_evaluates_it(trained, capsys):
    """A checkpoint file (not its run directory) is evaluated, not taken for a .onebit file."""
    from onebit.deploy.format import is_deploy_file

    assert not is_deploy_file(trained / "last.safetensors")
    assert main(["eval", str(trained / "last.safetensors"), "--set", "data.eval_subset=32"]) == 0
    assert "val_top1" in capsys.readouterr().out


def _folder_in_place_of(run: Path, name: str) -> None:
    (run / name).unlink()
    (run / name).mkdir()
    (run / name / "x").write_text("x")


@pytest.mark.parametrize("command", ["resume", "report"])
def test_metrics_that_is_a_folder_is_a_one_line_error(trained, tmp_path, capsys, command):
    run = _copy(trained, tmp_path / "run")
    _folder_in_place_of(run, "metrics.jsonl")
    files = _contents(run)
    if command == "resume":
        argv = ["train", str(RECU), *SETS, "--out", str(run), "--resume"]
    else:
        argv = ["report", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"onebit: error: cannot read {run / 'metrics.jsonl'}: Is a directory;")
    assert err.count("\n") == 1, err
    assert _contents(run) == files and (run / "metrics.jsonl" / "x").read_text() == "x"


def test_summary_of_seeds_with_a_damaged_last_json_is_a_one_line_error(trained, tmp_path, capsys):
    # a finished seed run resumed: nothing to train, then the summary reads its last.json
    out = tmp_path / "out"
    run = _copy(trained, out / "seed0")
    _folder_in_place_of(run, "last.json")
    kept = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "last.safetensors")}
    argv = ["train", str(RECU), *SETS, "--seeds", "0", "--out", str(out), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"onebit: error: cannot summarize {run}: its metrics.jsonl or last.json")
    assert "Is a directory" in err and "--resume to train seed 0 again" in err
    assert err.count("\n") == 1, err
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert not (out / "summary.json").exists()


def test_metrics_that_cannot_be_appended_is_an_output_error(tmp_path):
    run = RunDir(tmp_path / "run")
    run.metrics.mkdir(parents=True)
    with pytest.raises(OutputError, match=f"cannot write {run.metrics}: Is a directory; the last"):
        run.append_metrics({"epoch": 1})
