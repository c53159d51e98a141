"""The one file writer: whole files, the umask's mode, folders created, one-line errors; and
what a killed run leaves behind (temporary files, a partial metrics line) cleaned on resume."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from onebit.cli import main
from onebit.config import load_config
from onebit.errors import OutputError
from onebit.io import atomic_write, file_mode, folder_lock, remove_stale_temporaries
from onebit.train import RunDir, Trainer

ROOT = Path(__file__).resolve().parent.parent
FP = ROOT / "configs/fmnist/resnet20_fp.yaml"
TINY = [
    "data.subset=64",
    "data.batch_size=32",
    "data.eval_subset=64",
    "runtime.device=cpu",
    "schedule.epochs=1",
]
SETS = [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gives_the_umask_mode_and_creates_folders(tmp_path, umask_022):
    out = atomic_write(tmp_path / "a" / "b" / "x.txt", b"hello")
    assert out.read_bytes() == b"hello" and _mode(out) == 0o644 == file_mode()
    atomic_write(out, lambda tmp: tmp.write_text("again"))
    assert out.read_text() == "again" and _mode(out) == 0o644
    assert not list(out.parent.glob(".*.tmp"))


def test_atomic_write_errors_are_one_line_and_leave_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*file/y\.txt"):
        atomic_write(tmp_path / "file" / "y.txt", b"")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="Is a directory"):
        atomic_write(tmp_path / "dir", b"")

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "z.txt", fails)
    assert not (tmp_path / "z.txt").exists() and not list(tmp_path.glob(".*.tmp"))


def test_every_file_of_a_run_and_an_export_has_the_umask_mode(tmp_path, umask_022, one_thread):
    run = tmp_path / "run"
    assert main(["train", str(FP), *SETS, "--out", str(run)]) == 0
    out = tmp_path / "new" / "folder" / "m.onebit"  # a missing folder is created
    assert main(["export", str(run), str(out), "--no-recalibrate"]) == 0
    assert main(["report", str(run), "-o", str(tmp_path / "r" / "report.md")]) == 0
    files = [p for p in run.iterdir() if p.is_file()] + [out, tmp_path / "r" / "report.md"]
    assert len(files) >= 7
    assert {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}


def test_out_through_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = ["train", str(FP), *SETS]
    assert main([*args, "--out", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onebit: error: cannot write") and err.count("\n") == 1


def test_resume_clears_what_a_kill_leaves(tmp_path, one_thread):
    """A kill during a checkpoint write leaves .last.safetensors.*.tmp; a kill during the
    metrics append leaves a partial line; a kill before the first checkpoint leaves a metrics
    line with no checkpoint. Resume removes the first, drops the second and the third."""
    run = RunDir(tmp_path / "run")
    Trainer(load_config(FP, TINY), run).fit()  # epoch 1 of 1: metrics line + checkpoint
    stale = tmp_path / "run" / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"\0" * 100)
    with run.metrics.open("a") as f:
        f.write('{"phase": 0, "epoch": 2, "train_lo')  # cut mid-append
    Trainer(load_config(FP, TINY), run).fit(resume=True)  # finished: nothing left to train
    assert not stale.exists()
    epochs = [json.loads(line)["epoch"] for line in run.metrics.read_text().splitlines()]
    assert epochs == [1]
    assert "not a whole record" in run.log_file.read_text()
    fresh = RunDir(tmp_path / "fresh")  # killed after its metrics line, before its checkpoint
    fresh.path.mkdir()
    fresh.metrics.write_text('{"phase": 0, "epoch": 1}\n')
    Trainer(load_config(FP, TINY), fresh).fit(resume=True)
    assert [json.loads(x)["epoch"] for x in fresh.metrics.read_text().splitlines()] == [1]


HOLD = """
import sys, time
from onebit.io import folder_lock
with folder_lock(sys.argv[1], "busy"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_training_process_in_one_run_directory_is_a_one_line_error(
    tmp_path, capsys, one_thread
):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["train", str(FP), *SETS, "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"{run} is in use by another training process (pid {holder.pid})" in err
        assert "--resume" in err and "--out" in err
        assert [p.name for p in run.iterdir()] == [".lock"]  # the run wrote nothing
        # it fails before building the model and data: a missing dataset is not reached
        missing = ["--set", f"data.root={tmp_path / 'nowhere'}"]
        assert main(["train", str(FP), *SETS, *missing, "--out", str(run)]) == 2
        assert "in use by another training process" in capsys.readouterr().err
        assert main(["train", str(FP), *SETS, "--runs", "2", "--out", str(run)]) == 2
        assert "in use by another training process" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no stale lock: the OS released it with the process
    assert main(["train", str(FP), *SETS, "--out", str(run)]) == 0
    assert (run / "last.safetensors").exists()
    assert (run / ".lock").read_text() == f"{os.getpid()}\n"


def test_folder_lock_is_reentrant_within_a_process(tmp_path):
    with folder_lock(tmp_path, "busy"):
        with folder_lock(tmp_path / ".", "busy"):  # the same folder, another spelling
            pass
        with folder_lock(tmp_path, "busy"):  # still held after the inner block
            pass
    held = subprocess.run(  # released after the outer block: another process takes it
        [sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert held.stdout == "held\n", held.stderr


def test_folder_lock_leaves_no_folder_it_created_for_nothing(tmp_path, capsys, one_thread):
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "a" / "new", "busy"):
        raise RuntimeError("failed before writing anything")
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]  # the folder it created is gone
    with folder_lock(tmp_path / "kept", "busy"):
        (tmp_path / "kept" / "x").write_text("")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [".lock", "x"]
    (tmp_path / "old").mkdir()
    with folder_lock(tmp_path / "old", "busy"):  # a folder that was there stays, lock too
        pass
    assert [p.name for p in (tmp_path / "old").iterdir()] == [".lock"]
    # a user error before training (no dataset) leaves no run directory behind
    missing = ["--set", f"data.root={tmp_path / 'nowhere'}"]
    assert main(["train", str(FP), *SETS, *missing, "--out", str(tmp_path / "run")]) == 2
    assert "Fashion-MNIST train files not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_remove_stale_temporaries_only_takes_temporaries(tmp_path):
    (tmp_path / ".x.safetensors.k2.tmp").write_text("")
    (tmp_path / "keep.tmp").write_text("")
    (tmp_path / "last.safetensors").write_text("")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".x.safetensors.k2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "last.safetensors"]
