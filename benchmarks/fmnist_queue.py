"""Issue 25's Fashion-MNIST runs (held-out split), trained in order on a few lanes at once.

Every run of the queue trains with ``--set data.val_split=5000 --set eval.select_on=val`` (and
a distilled one with ``--set runtime.compile_teacher=true``) into
``OUT/<name>`` (default ``runs/fmnist40v``), one thread each at ``nice 5``, with ``--resume``
(a run that finished returns at once). A lane takes the first run that has not finished, that
no process trains (the run directory's lock), and whose teacher run has finished; it waits for
one to become free. Stop it at any time (Ctrl-C or kill: the runs it started stop with it)
and start it again: each run continues from its last epoch.

A finished run's record (config.yaml, metrics.jsonl, last.json, train.log; a teacher's
best.safetensors too) is copied into ``ARCHIVE/<name>`` (default ``results/fmnist40v``, kept in
git): a run recorded there counts as finished and teaches from there, so that a fresh machine
(``runs/`` is not kept between sessions) goes on where the last one stopped, and
``onebit report results/fmnist40v/<name>`` remakes a row of docs/results.md.

A run that will not finish before its machine goes (a session's end) is carried with
``--carry``: its last and best checkpoints go into the archive beside its record (some 4.5 MB
for a ResNet-20), and the queue on the next machine starts from them where ``OUT`` holds
less of that run. When the run finishes, its record replaces the carried checkpoints.

    python benchmarks/fmnist_queue.py --list              # the queue and where each run stands
    nohup python benchmarks/fmnist_queue.py >> runs/fmnist40v/queue.log 2>&1 &
    python benchmarks/fmnist_queue.py --lanes 1 --only 'resnet20_*'
    python benchmarks/fmnist_queue.py --carry             # before the machine goes; git add
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
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
ARCHIVE = ROOT / "results" / "fmnist40v"
# what the archive keeps of a finished run; last.json last (what ``finished`` reads)
RECORD = ("config.yaml", "metrics.jsonl", "train.log", "last.json")
# what ``--carry`` adds for an unfinished run: what ``onebit train --resume`` continues from
CHECKPOINTS = ("best.safetensors", "last.safetensors")
# a carried run's files but last.json, which comes last
CARRIED = ("config.yaml", *CHECKPOINTS, "metrics.jsonl", "train.log")


@dataclass(frozen=True)
class Run:
    name: str
    config: str  # relative to the repository
    sets: tuple[str, ...] = ()
    teacher: str | None = None  # the run (of this queue) whose checkpoint distils into it


def queue() -> list[Run]:
    """The runs left, in order: seed 2 of ResNet-20's FP and ReCU, seeds 1 and 2 of the best
    recipe (both taught by FP seed 2: FP seed 1's weights did not outlive its session), then
    two levers docs/results.md names for the ReCU goal beside FIRNet-20's real-valued halves:
    ReActNet's real-valued downsampling (a full-precision 1x1 conv + BN on the two strided
    shortcuts, where ResNet-20's parameter-free shortcut pads half the channels with zeros;
    40 epochs, seed 2, against ReCU seed 2) and a longer schedule (ReCU ResNet-20 for 80
    epochs, its lr and tau schedules following). The seeds come first: they make the
    headline rows mean +- std of 3. The queue's
    earlier runs (FIRNet-20 recu, fp and best; ResNet-20 fp and recu seed 1) finished before
    the archive existed: their figures are in docs/results.md."""
    runs = [
        Run("resnet20_fp_seed2", "configs/fmnist/resnet20_fp.yaml", ("runtime.seed=2",)),
        Run("resnet20_recu_seed2", "configs/fmnist/resnet20_recu.yaml", ("runtime.seed=2",)),
    ]
    for seed in (1, 2):
        runs.append(
            Run(
                f"resnet20_best_seed{seed}",
                "configs/fmnist/resnet20_best.yaml",
                (f"runtime.seed={seed}",),
                "resnet20_fp_seed2",
            )
        )
    runs.append(
        Run(
            "resnet20_recu_realdown_seed2",
            "configs/fmnist/resnet20_recu.yaml",
            ("runtime.seed=2", "model.downsample=avgpool_conv"),
        )
    )
    runs.append(
        Run("resnet20_recu_e80", "configs/fmnist/resnet20_recu.yaml", ("schedule.epochs=80",))
    )
    return runs


def where(name: str, *folders: Path) -> Path | None:
    """The first of ``folders/name`` that holds run ``name`` finished, or None."""
    for folder in folders:
        if finished(folder / name):
            return folder / name
    return None


def copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy ``source/name`` to ``target/name`` for each of ``names`` that exists, each file
    atomically, in order."""
    from onebit.io import atomic_write

    for name in names:
        if (source / name).is_file():
            atomic_write(target / name, lambda tmp, src=source / name: shutil.copyfile(src, tmp))


def archive_run(run_dir: Path, folder: Path, weights: bool) -> Path:
    """Copy finished ``run_dir``'s record (and best.safetensors if ``weights``) into
    ``folder/<name>``, each file atomically, last.json last; checkpoints that ``--carry``
    left there go."""
    target = folder / run_dir.name
    copy_files(run_dir, target, (("best.safetensors",) if weights else ()) + RECORD)
    for name in CHECKPOINTS[1:] if weights else CHECKPOINTS:
        (target / name).unlink(missing_ok=True)
    return target


def carried(run_dir: Path) -> bool:
    """Whether ``run_dir`` (an archive's) holds an unfinished run that can be continued."""
    return (run_dir / "last.safetensors").is_file() and progress(run_dir) is not None


def ahead(a: Path, b: Path) -> bool:
    """Whether run directory ``a``'s last checkpoint is later than ``b``'s (or ``b`` has none)."""
    pa, pb = progress(a), progress(b)
    return pa is not None and (pb is None or (pa[0], pa[2]) > (pb[0], pb[2]))


def carry_run(run_dir: Path, folder: Path) -> Path:
    """Copy unfinished ``run_dir`` whole (record and checkpoints) into ``folder/<name>``,
    also while it trains: last.json is written from the copied last.safetensors' own state,
    so the two agree, and metrics.jsonl is copied after it, so it holds that epoch's record
    (the trainer appends it first; ``--resume`` drops lines past the checkpoint). The best
    checkpoint may be an epoch ahead of the last (the trainer writes it first): the resumed
    run trains that epoch again and writes it again."""
    from onebit.train.checkpoint import atomic_write_text, read_checkpoint

    target = folder / run_dir.name
    copy_files(run_dir, target, CARRIED)
    _, state = read_checkpoint(target / "last.safetensors")
    state.pop("format", None)
    atomic_write_text(target / "last.json", json.dumps(state, indent=1))
    return target


def take_over(run_dir: Path, folder: Path) -> bool:
    """Before ``run_dir`` trains: if ``folder`` (the archive) carries a later checkpoint of
    it, copy that in (last.json last) so that ``--resume`` continues from there."""
    source = folder / run_dir.name
    if not carried(source) or not ahead(source, run_dir):
        return False
    copy_files(source, run_dir, CARRIED)
    copy_files(source, run_dir, ("last.json",))
    return True


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


def command(run: Run, out: Path, archive: Path = ARCHIVE) -> list[str]:
    sets = [*HELD_OUT, *run.sets]
    if run.teacher:
        # the archive's copy first: every student's config then names the same teacher path,
        # which holds on any clone (seeds trained on different machines group in one row)
        teacher = where(run.teacher, archive, out) or out / run.teacher
        if teacher.is_relative_to(ROOT):
            teacher = teacher.relative_to(ROOT)
        # the FP teacher compiled: ~1.1x the step on the CPU (a runtime key: resumable)
        sets += [f"distill.teacher.checkpoint={teacher}", "runtime.compile_teacher=true"]
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


def status(run: Run, out: Path, archive: Path) -> str:
    run_dir = where(run.name, out, archive) or out / run.name
    if not finished(run_dir) and carried(archive / run.name) and ahead(archive / run.name, run_dir):
        run_dir = archive / run.name  # what the next start continues from
    state = progress(run_dir)
    stands = (
        "not started"
        if state is None
        else (f"phase {state[0] + 1}/{state[1]}, epoch {state[2]}/{state[3]}")
    )
    if finished(run_dir):
        return f"finished ({stands}; {run_dir})"
    if run_dir == archive / run.name:
        return f"carried ({stands}; {run_dir})"
    if training(run_dir):
        return f"training ({stands})"
    if run.teacher and not where(run.teacher, out, archive):
        return f"waits for {run.teacher} ({stands})"
    return stands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fmnist40v")
    parser.add_argument(
        "--archive",
        type=Path,
        default=ARCHIVE,
        help="where finished runs are recorded (results/fmnist40v, kept in git)",
    )
    parser.add_argument("--lanes", type=int, default=2, help="runs at once (2)")
    parser.add_argument("--only", action="append", help="glob of run names (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the queue and exit")
    parser.add_argument(
        "--carry",
        action="store_true",
        help="record the finished runs, copy every unfinished run's checkpoints into the "
        "archive (the next machine continues them) and exit",
    )
    parser.add_argument("--poll", type=float, default=60.0, help="seconds between checks")
    args = parser.parse_args(argv)
    runs = [
        r for r in queue() if not args.only or any(fnmatch.fnmatch(r.name, p) for p in args.only)
    ]
    if args.list:
        width = max((len(run.name) for run in runs), default=0)
        for run in runs:
            print(f"{run.name:{width}}  {status(run, args.out, args.archive)}")
        return 0
    if args.carry:
        record_finished(runs, args.out, args.archive)
        for run in runs:
            run_dir = args.out / run.name
            if (
                carried(run_dir)
                and not finished(run_dir)
                and ahead(run_dir, args.archive / run.name)
            ):
                target = carry_run(run_dir, args.archive)
                print(f"{run.name}: carried into {target} ({status(run, args.out, args.archive)})")
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


def record_finished(runs: list[Run], out: Path, archive: Path) -> None:
    """Record in ``archive`` each of ``runs`` that finished in ``out`` and is not there yet."""
    teachers = {r.teacher for r in queue()}
    for r in runs:
        if finished(out / r.name) and not finished(archive / r.name):
            target = archive_run(out / r.name, archive, r.name in teachers)
            print(f"{time.strftime('%H:%M')} {r.name}: recorded in {target}", flush=True)


def schedule(runs: list[Run], args: argparse.Namespace, mine: dict[str, subprocess.Popen]) -> int:
    """Train ``runs`` on ``args.lanes`` lanes until none is left; ``mine``: the processes
    this queue started, by run name."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed: list[str] = []

    def done(name: str) -> bool:
        return where(name, args.out, args.archive) is not None

    while True:
        for name, proc in list(mine.items()):
            if proc.poll() is not None:
                del mine[name]
                print(f"{time.strftime('%H:%M')} {name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
        record_finished(runs, args.out, args.archive)
        others = sum(training(args.out / r.name) for r in runs if r.name not in mine)
        ready = [
            r
            for r in runs
            if r.name not in mine
            and r.name not in failed
            and not done(r.name)
            and not training(args.out / r.name)
            and (r.teacher is None or done(r.teacher))
        ]
        while ready and len(mine) + others < args.lanes:
            run = ready.pop(0)
            args.out.mkdir(parents=True, exist_ok=True)
            if take_over(args.out / run.name, args.archive):
                print(f"{time.strftime('%H:%M')} {run.name}: continues the archive's", flush=True)
            log = open(args.out / f"{run.name}.out", "a")  # noqa: SIM115 (the child's stdout)
            print(f"{time.strftime('%H:%M')} {run.name}: start", flush=True)
            mine[run.name] = subprocess.Popen(
                ["nice", "-n", "5", *command(run, args.out, args.archive)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        left = [r for r in runs if r.name not in failed and not done(r.name)]
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
