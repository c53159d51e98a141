"""Issue 25's Fashion-MNIST runs (held-out split), trained in order on a few lanes at once.

Every run of the queue trains with ``--set data.val_split=5000 --set eval.select_on=val`` (and
a distilled one with ``--set runtime.compile_teacher=true``) into
``OUT/<name>`` (default ``runs/fmnist40v``), one thread each at ``nice 5``, with ``--resume``
(a run that finished returns at once). A lane takes the first run that has not finished, that
no process trains (the run directory's lock), and whose teacher run has finished; it waits for
one to become free. Stop it at any time (Ctrl-C or kill: the runs it started stop with it)
and start it again: each run continues from its last epoch.

    python benchmarks/fmnist_queue.py --list              # the queue and where each run stands
    nohup python benchmarks/fmnist_queue.py >> runs/fmnist40v/queue.log 2>&1 &
    python benchmarks/fmnist_queue.py --lanes 1 --only 'resnet20_*'
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_results import run_finished as finished
from fmnist_results import run_progress as progress

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ("data.val_split=5000", "eval.select_on=val")


@dataclass(frozen=True)
class Run:
    name: str
    config: str  # relative to the repository
    sets: tuple[str, ...] = ()
    teacher: str | None = None  # the run (of this queue) whose checkpoint distils into it


def queue() -> list[Run]:
    """The runs, in order: FIRNet-20 recu and its FP twin, the two-step recipe on FIRNet-20
    (taught by that twin), then seeds 1 and 2 of ResNet-20's FP, ReCU and best recipe (the
    best recipe taught by the FP run of its seed), and last the lever docs/results.md names
    for the ReCU goal beside more real-valued capacity (FIRNet-20): a longer schedule, ReCU
    ResNet-20 for 80 epochs (its lr and tau schedules follow). The seeds come first: they
    make the headline rows mean +- std of 3."""
    runs = [
        Run("firnet20_recu", "configs/fmnist/firnet20_recu.yaml"),
        Run("firnet20_fp", "configs/fmnist/firnet20_fp.yaml"),
        Run("firnet20_best", "configs/fmnist/firnet20_best.yaml", teacher="firnet20_fp"),
    ]
    for seed in (1, 2):
        seed_set = (f"runtime.seed={seed}",)
        fp = f"resnet20_fp_seed{seed}"
        runs += [
            Run(fp, "configs/fmnist/resnet20_fp.yaml", seed_set),
            Run(f"resnet20_recu_seed{seed}", "configs/fmnist/resnet20_recu.yaml", seed_set),
            Run(f"resnet20_best_seed{seed}", "configs/fmnist/resnet20_best.yaml", seed_set, fp),
        ]
    runs.append(
        Run("resnet20_recu_e80", "configs/fmnist/resnet20_recu.yaml", ("schedule.epochs=80",))
    )
    return runs


def training(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock (onebit.io.folder_lock: flock)."""
    import fcntl

    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def command(run: Run, out: Path) -> list[str]:
    sets = [*HELD_OUT, *run.sets]
    if run.teacher:
        # the FP teacher compiled: ~1.1x the step on the CPU (a runtime key: resumable)
        sets += [f"distill.teacher.checkpoint={out / run.teacher}", "runtime.compile_teacher=true"]
    args = [a for s in sets for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "onebit",
        "train",
        run.config,
        *args,
        "--out",
        str(out / run.name),
        "--resume",
    ]


def status(run: Run, out: Path) -> str:
    run_dir = out / run.name
    state = progress(run_dir)
    where = (
        "not started"
        if state is None
        else (f"phase {state[0] + 1}/{state[1]}, epoch {state[2]}/{state[3]}")
    )
    if finished(run_dir):
        return f"finished ({where})"
    if training(run_dir):
        return f"training ({where})"
    if run.teacher and not finished(out / run.teacher):
        return f"waits for {run.teacher} ({where})"
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fmnist40v")
    parser.add_argument("--lanes", type=int, default=2, help="runs at once (2)")
    parser.add_argument("--only", action="append", help="glob of run names (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the queue and exit")
    parser.add_argument("--poll", type=float, default=60.0, help="seconds between checks")
    args = parser.parse_args(argv)
    runs = [
        r for r in queue() if not args.only or any(fnmatch.fnmatch(r.name, p) for p in args.only)
    ]
    if args.list:
        for run in runs:
            print(f"{run.name:24} {status(run, args.out)}")
        return 0
    mine: dict[str, subprocess.Popen] = {}
    # SIGTERM (kill, pkill) stops the runs too, as Ctrl-C does: each continues with --resume
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return schedule(runs, args, mine)
    finally:
        for proc in mine.values():
            proc.terminate()
        for proc in mine.values():
            proc.wait()


def schedule(runs: list[Run], args: argparse.Namespace, mine: dict[str, subprocess.Popen]) -> int:
    """Train ``runs`` on ``args.lanes`` lanes until none is left; ``mine``: the processes
    this queue started, by run name."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed: list[str] = []
    while True:
        for name, proc in list(mine.items()):
            if proc.poll() is not None:
                del mine[name]
                print(f"{time.strftime('%H:%M')} {name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
        others = sum(training(args.out / r.name) for r in runs if r.name not in mine)
        ready = [
            r
            for r in runs
            if r.name not in mine
            and r.name not in failed
            and not finished(args.out / r.name)
            and not training(args.out / r.name)
            and (r.teacher is None or finished(args.out / r.teacher))
        ]
        while ready and len(mine) + others < args.lanes:
            run = ready.pop(0)
            args.out.mkdir(parents=True, exist_ok=True)
            log = open(args.out / f"{run.name}.out", "a")  # noqa: SIM115 (the child's stdout)
            print(f"{time.strftime('%H:%M')} {run.name}: start", flush=True)
            mine[run.name] = subprocess.Popen(
                ["nice", "-n", "5", *command(run, args.out)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        left = [r for r in runs if r.name not in failed and not finished(args.out / r.name)]
        if not left:
            break
        if not mine and not others and not ready:
            print(
                "the runs left wait for a teacher that cannot finish: "
                + ", ".join(r.name for r in left),
                flush=True,
            )
            return 1
        time.sleep(args.poll)
    if failed:
        print(f"failed: {', '.join(failed)} (their .out files say why)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
