"""benchmarks/fmnist_queue.py: where a run stands, who holds it, what starts next."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from onebit.io import folder_lock

ROOT = Path(__file__).resolve().parent.parent


def load_queue():
    spec = importlib.util.spec_from_file_location(
        "fmnist_queue", ROOT / "benchmarks" / "fmnist_queue.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fmnist_queue"] = module
    spec.loader.exec_module(module)
    return module


def write_last(run_dir: Path, phase: int, epoch: int, phases: list | None = None) -> None:
    config = {"schedule": {"epochs": 20}}
    if phases is not None:
        config["phases"] = phases
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"kind": "last", "progress": {"phase": phase, "epoch": epoch}, "config": config}
    (run_dir / "last.json").write_text(json.dumps(state))


def test_finished_counts_every_phase_and_its_own_epochs(tmp_path):
    q = load_queue()
    assert not q.finished(tmp_path / "none") and q.progress(tmp_path / "none") is None
    write_last(tmp_path / "one", 0, 19)
    assert not q.finished(tmp_path / "one")
    write_last(tmp_path / "one", 0, 20)
    assert q.finished(tmp_path / "one")
    two = [{"name": "step1"}, {"name": "step2", "overrides": {"schedule": {"epochs": 5}}}]
    write_last(tmp_path / "two", 0, 20, two)  # step 1 done, step 2 not started
    assert q.progress(tmp_path / "two") == (0, 2, 20, 20) and not q.finished(tmp_path / "two")
    write_last(tmp_path / "two", 1, 5, two)  # step 2's own 5 epochs
    assert q.finished(tmp_path / "two")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.json").write_text("{not json")
    assert not q.finished(tmp_path / "bad")


def test_a_run_held_by_a_process_is_training(tmp_path):
    q = load_queue()
    run_dir = tmp_path / "run"
    assert not q.training(run_dir)
    with folder_lock(run_dir, "busy"):
        assert q.training(run_dir)
    assert not q.training(run_dir)  # the lock file stays, unheld


def test_the_queue_its_teachers_and_its_commands(tmp_path, capsys):
    q = load_queue()
    out, archive = tmp_path / "runs", tmp_path / "archive"
    runs = {r.name: r for r in q.queue()}
    assert runs["resnet20_best_seed1"].teacher == "resnet20_fp_seed2"
    assert runs["resnet20_best_seed2"].teacher == "resnet20_fp_seed2"
    for run in runs.values():
        assert (ROOT / run.config).exists()
    cmd = q.command(runs["resnet20_best_seed1"], out, archive)
    assert cmd[-3:] == ["--out", str(out / "resnet20_best_seed1"), "--resume"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == [
        "data.val_split=5000",
        "eval.select_on=val",
        "runtime.seed=1",
        f"distill.teacher.checkpoint={out / 'resnet20_fp_seed2'}",
        "runtime.compile_teacher=true",
    ]
    listing = ["--list", "--out", str(out), "--archive", str(archive)]
    assert q.main([*listing, "--only", "resnet20_*_seed*"]) == 0
    assert "waits for resnet20_fp_seed2" in capsys.readouterr().out
    # a finished teacher frees its students; --list says where each run stands
    write_last(out / "resnet20_fp_seed2", 0, 40)
    assert q.main([*listing, "--only", "resnet20_*_seed*"]) == 0
    listed = capsys.readouterr().out
    assert "resnet20_fp_seed2" in listed and "finished" in listed
    assert "resnet20_best_seed1" in listed and "waits for" not in listed
    # every run finished: the queue records them in the archive and ends, starting nothing
    (out / "resnet20_fp_seed2" / "best.safetensors").write_bytes(b"weights")
    (out / "resnet20_fp_seed2" / "metrics.jsonl").write_text("{}\n")
    students = ("resnet20_best_seed1", "resnet20_best_seed2")
    for name in ("resnet20_recu_seed2", *students, "resnet20_recu_realdown_seed2"):
        write_last(out / name, 0, 40)
        (out / name / "best.safetensors").write_bytes(b"student")
    run = [*listing[1:], "--only", "resnet20_*_seed*", "--poll", "0"]
    assert q.main(run) == 0
    assert "recorded in" in capsys.readouterr().out
    teacher = archive / "resnet20_fp_seed2"
    assert (teacher / "best.safetensors").read_bytes() == b"weights"  # a teacher's weights
    assert (teacher / "metrics.jsonl").read_text() == "{}\n"
    assert q.finished(archive / "resnet20_best_seed2")
    assert not (archive / "resnet20_best_seed2" / "best.safetensors").exists()  # not a teacher
    # a fresh machine (no runs/): the archive counts as finished and teaches
    fresh = tmp_path / "fresh"
    assert q.main(["--out", str(fresh), "--archive", str(archive), *run[4:]]) == 0
    assert not fresh.exists()  # nothing started
    cmd = q.command(runs["resnet20_best_seed2"], fresh, archive)
    assert f"distill.teacher.checkpoint={teacher}" in cmd
    # the recorded copy wins over out's: every student names one teacher path
    assert f"distill.teacher.checkpoint={teacher}" in q.command(
        runs["resnet20_best_seed1"], out, archive
    )
    inside = q.ROOT / "results" / "fmnist40v"
    if q.where("resnet20_fp_seed2", fresh, inside):  # the committed archive: a relative path
        cmd = q.command(runs["resnet20_best_seed2"], fresh)
        assert "distill.teacher.checkpoint=results/fmnist40v/resnet20_fp_seed2" in cmd


def test_kill_stops_the_runs_the_queue_started(tmp_path):
    """SIGTERM to the queue (kill, pkill) terminates its training processes too, so that a
    restarted queue trains them on the code of its own start."""
    import signal
    import subprocess
    import time

    pids = tmp_path / "pids"
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import fmnist_queue as q
q.queue = lambda: [q.Run("a", "x.yaml"), q.Run("b", "y.yaml")]
sleeper = ("import os, time; open({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\\\n'); "
           "time.sleep(600)")
q.command = lambda run, out, archive: [sys.executable, "-c", sleeper]
sys.exit(q.main(["--out", {str(tmp_path / "runs")!r}, "--archive", {str(tmp_path / "archive")!r},
                  "--poll", "0.1"]))
"""
    queue = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = pids.read_text().split() if pids.exists() else []
            if len(started) == 2:
                break
            time.sleep(0.1)
        assert len(started) == 2, "the queue did not start its two runs"
        queue.send_signal(signal.SIGTERM)
        assert queue.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        queue.kill()
    for pid in map(int, started):
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), f"run process {pid} outlived the queue"


def test_the_recorded_runs_are_whole():
    """results/fmnist40v (kept in git): every record is a run of the queue that ``onebit
    report`` reads, held out as the queue trains: finished, with weights where it teaches,
    or carried (unfinished, with the checkpoints it continues from, its last.json theirs)."""
    from onebit.report import read_run
    from onebit.train.checkpoint import load_model, read_checkpoint

    q = load_queue()
    runs = {r.name: r for r in q.queue()}
    teachers = {r.teacher for r in runs.values()}
    recorded = sorted(p for p in q.ARCHIVE.glob("*") if p.is_dir())
    for run_dir in recorded:
        assert run_dir.name in runs, f"{run_dir.name} is not a run of the queue"
        run = read_run(run_dir)
        assert run.config.data.val_split == 5000
        assert run.config.runtime.seed == int(
            dict(s.split("=") for s in runs[run_dir.name].sets).get("runtime.seed", 0)
        )
        if not q.finished(run_dir):
            assert q.carried(run_dir) and not run.finished, f"{run_dir.name}: neither"
            _, state = read_checkpoint(run_dir / "last.safetensors")
            saved = json.loads((run_dir / "last.json").read_text())
            assert saved["progress"] == state["progress"]
            assert (run_dir / "best.safetensors").is_file()
            continue
        assert run.finished and not (run_dir / "last.safetensors").exists()
        assert (run_dir / "best.safetensors").is_file() == (run_dir.name in teachers)
        if run_dir.name in teachers:  # the weights a student is taught by, whole
            model, config = load_model(run_dir / "best.safetensors")
            assert config.model["method"] == "fp" and model(torch.zeros(2, 1, 28, 28)).shape == (
                2,
                10,
            )


def test_a_carried_run_continues_on_a_fresh_machine(tmp_path, monkeypatch, capsys, one_thread):
    """--carry copies an unfinished run's checkpoints into the archive; a queue on a fresh
    machine (another --out) continues it from there to the weights of an uninterrupted run,
    and its finished record then replaces the carried checkpoints."""
    from safetensors.torch import load_file

    from onebit.cli import main as onebit
    from onebit.train.trainer import RunDir

    q = load_queue()
    tiny = ("data.subset=64", "data.batch_size=32", "data.eval_subset=32", "runtime.device=cpu")
    tiny += ("schedule.epochs=2",)
    run = q.Run("tiny", "configs/fmnist/resnet20_recu.yaml", tiny)
    monkeypatch.setattr(q, "queue", lambda: [run])
    monkeypatch.setattr(q, "HELD_OUT", ())
    out, archive, fresh = tmp_path / "runs", tmp_path / "archive", tmp_path / "fresh"
    args = [run.config, *(a for s in tiny for a in ("--set", s))]

    class Stop(Exception):
        pass

    save_last = RunDir.save_last

    def stop_after_epoch_1(self, tensors, state):  # the machine goes after epoch 1
        save_last(self, tensors, state)
        raise Stop

    monkeypatch.setattr(RunDir, "save_last", stop_after_epoch_1)
    with pytest.raises(Stop):
        onebit(["train", *args, "--out", str(out / "tiny")])
    monkeypatch.setattr(RunDir, "save_last", save_last)
    assert q.progress(out / "tiny") == (0, 1, 1, 2)

    listing = ["--out", str(out), "--archive", str(archive)]
    assert q.main([*listing, "--carry"]) == 0
    carried = archive / "tiny"
    assert q.carried(carried) and not q.finished(carried)
    assert q.progress(carried) == (0, 1, 1, 2)
    assert {p.name for p in carried.iterdir()} == {
        "config.yaml",
        "last.safetensors",
        "last.json",
        "best.safetensors",
        "metrics.jsonl",
        "train.log",
    }
    assert q.main([*listing, "--carry"]) == 0  # nothing newer: nothing copied again
    capsys.readouterr()
    assert q.main(["--list", "--out", str(fresh), "--archive", str(archive)]) == 0
    assert f"carried (phase 1/1, epoch 1/2; {carried})" in capsys.readouterr().out

    # a fresh machine: the queue continues the carried run (a real `onebit train --resume`)
    assert q.main(["--out", str(fresh), "--archive", str(archive), "--poll", "0.2"]) == 0
    assert "tiny: continues the archive's" in capsys.readouterr().out
    assert q.finished(fresh / "tiny") and q.finished(carried)
    assert not (carried / "last.safetensors").exists()  # the record replaced the checkpoints
    assert not (carried / "best.safetensors").exists()  # (not a teacher)
    assert len((carried / "metrics.jsonl").read_text().splitlines()) == 2
    assert onebit(["train", *args, "--out", str(tmp_path / "reference")]) == 0
    a = load_file(tmp_path / "reference" / "last.safetensors")
    b = load_file(fresh / "tiny" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_carry_records_the_finished_runs_too(tmp_path, capsys):
    q = load_queue()
    out, archive = tmp_path / "runs", tmp_path / "archive"
    write_last(out / "resnet20_fp_seed2", 0, 40)
    (out / "resnet20_fp_seed2" / "best.safetensors").write_bytes(b"weights")
    write_last(out / "resnet20_recu_seed2", 0, 7)  # unfinished, no checkpoint: nothing to carry
    assert q.main(["--carry", "--out", str(out), "--archive", str(archive)]) == 0
    assert "resnet20_fp_seed2: recorded in" in capsys.readouterr().out
    assert q.finished(archive / "resnet20_fp_seed2")
    assert (archive / "resnet20_fp_seed2" / "best.safetensors").read_bytes() == b"weights"
    assert not (archive / "resnet20_recu_seed2").exists()
