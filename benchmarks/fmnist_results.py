"""The Fashion-MNIST results matrix: every CIFAR-scale model x method, trained with
``onebit train`` into one output tree, then ``onebit report`` and ``onebit plot``.

Each entry of :func:`matrix` is a recipe in configs/fmnist/ plus ``--set`` overrides: a model's
own ``<model>_<method>.yaml`` where one exists, else the model's base recipe with
``model.method=<method>`` (and ``model.bits=32w32a`` for ``fp``): the same optimizer, schedule
and data for every method of a model. Recipes named ``*kd*`` / ``*bnew*`` in configs/fmnist/
are added as they are. ``--epochs E`` scales each recipe's schedule to E epochs
(``schedule.epochs``; warm-up and step milestones in proportion; the ReCU tau and IR-Net EDE
schedules follow the epoch count by construction).

Run k of an entry trains into ``OUT/<entry>/seed<k>`` with ``runtime.seed=k`` (the layout of
``onebit train --runs N``): the headline entries get ``--seeds`` runs, the others one.
A run whose last.json says it finished is skipped; any other is started or continued with
``--resume``, so the script can be stopped and restarted at any point. A failed run is
reported and the others go on.

    python benchmarks/fmnist_results.py --epochs 40                    # the whole matrix
    python benchmarks/fmnist_results.py --epochs 1 --subset 1280 --eval-subset 1000 --seeds 1
    python benchmarks/fmnist_results.py --only 'resnet20_*' --dry-run  # the commands, no training
    python benchmarks/fmnist_results.py --estimate runs/fmnist_results/e1_n1280 --epochs 40
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onebit.cli import main as onebit_main
from onebit.config import load_config
from onebit.report import find_runs, group_runs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "fmnist"
FMNIST_TRAIN_IMAGES = 60_000

# Each model's base recipe (configs/fmnist/<base>.yaml); methods without their own file swap in.
MODELS = {
    "resnet20": "resnet20_recu",
    "resnet18_cifar": "resnet18_cifar_irnet",
    "vgg_small": "vgg_small_irnet",
    "firnet20": "firnet20_recu",
}
METHODS = ("fp", "ste", "xnor", "bireal", "irnet", "recu")
EXTRA_RECIPES = ("*kd*.yaml", "*bnew*.yaml")  # added as they are, one entry per file
HEADLINE = ("resnet20_fp", "resnet20_recu", "resnet20_irnet", "resnet18_cifar_irnet")


@dataclass(frozen=True)
class Entry:
    """One row of the matrix: a recipe file and the overrides that make it this entry."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()


def matrix() -> list[Entry]:
    """Every model x method of :data:`MODELS` / :data:`METHODS`, then the extra recipes.
    Extend it by adding entries here (or files matching :data:`EXTRA_RECIPES`)."""
    entries = []
    for model, base in MODELS.items():
        for method in METHODS:
            own = CONFIGS / f"{model}_{method}.yaml"
            if own.exists():
                entries.append(Entry(own.stem, own))
                continue
            swap = [f"model.method={method}"] + (["model.bits=32w32a"] if method == "fp" else [])
            entries.append(Entry(f"{model}_{method}", CONFIGS / f"{base}.yaml", tuple(swap)))
    extras = sorted({p for pattern in EXTRA_RECIPES for p in CONFIGS.glob(pattern)})
    return entries + [Entry(p.stem, p) for p in extras]


def scaled_schedule(entry: Entry, epochs: int | None) -> list[str]:
    """Overrides that stretch the recipe's schedule to ``epochs`` (none for None)."""
    if epochs is None:
        return []
    schedule = load_config(entry.config, entry.overrides).schedule
    factor = epochs / schedule.epochs
    overrides = [f"schedule.epochs={epochs}"]
    if schedule.warmup_epochs:
        overrides.append(f"schedule.warmup_epochs={schedule.warmup_epochs * factor:g}")
    if schedule.milestones:
        milestones = ",".join(f"{m * factor:g}" for m in schedule.milestones)
        overrides.append(f"schedule.milestones=[{milestones}]")
    return overrides


def run_progress(run_dir: Path) -> tuple[int, int, int, int] | None:
    """(phase, phases, epoch, the phase's epochs) of ``run_dir``'s last checkpoint, or None."""
    try:
        state = json.loads((run_dir / "last.json").read_text())
        config, done = state["config"], state["progress"]
        phases = config.get("phases") or [{}]
        phase = done["phase"]
        overrides = phases[phase].get("overrides") or {}
        epochs = (overrides.get("schedule") or {}).get("epochs", config["schedule"]["epochs"])
        return phase, len(phases), done["epoch"], epochs
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def run_finished(run_dir: Path) -> bool:
    """True if ``run_dir``'s last checkpoint is at the last epoch of its config's last phase
    (a phase's own ``schedule.epochs`` where it overrides it)."""
    state = run_progress(run_dir)
    return state is not None and state[0] == state[1] - 1 and state[2] >= state[3]


@dataclass(frozen=True)
class Job:
    """One training run of the matrix: the ``onebit train`` arguments and where it writes."""

    entry: Entry
    seed: int
    run_dir: Path
    args: tuple[str, ...]

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "onebit", *self.args]


def jobs(args: argparse.Namespace) -> list[Job]:
    """The runs the command line asks for, in matrix order."""
    data = [f"data.subset={args.subset}"] if args.subset else []
    data += [f"data.eval_subset={args.eval_subset}"] if args.eval_subset else []
    result = []
    for entry in matrix():
        if args.only and not any(fnmatch.fnmatch(entry.name, p) for p in args.only):
            continue
        seeds = args.seeds if entry.name in args.headline else 1
        overrides = [*entry.overrides, *scaled_schedule(entry, args.epochs), *data, *args.set]
        for seed in range(seeds):
            run_dir = args.out / entry.name / f"seed{seed}"
            sets = [a for o in [*overrides, f"runtime.seed={seed}"] for a in ("--set", o)]
            config = str(entry.config.relative_to(ROOT))
            train = ("train", config, *sets, "--out", str(run_dir), "--resume")
            result.append(Job(entry, seed, run_dir, train))
    return result


def train_all(todo: Sequence[Job], dry_run: bool) -> list[Job]:
    """Train every job not finished yet, one after the other; returns the failed ones."""
    failed = []
    for i, job in enumerate(todo, 1):
        status = "done, skipped" if run_finished(job.run_dir) else "train"
        print(f"[{i}/{len(todo)}] {job.run_dir}: {status}", flush=True)
        if status != "train":
            continue
        if dry_run:
            print("  " + shlex.join(["onebit", *job.args]), flush=True)
            continue
        start = time.perf_counter()
        code = subprocess.call(job.command, cwd=ROOT)
        print(f"  exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(job)
    return failed


def report_and_plot(out: Path, names: Sequence[str]) -> int:
    """``onebit report OUT -o OUT/results.md``; one ``onebit plot`` per model family
    (``OUT/curves_<model>.png``) and one of the headline entries (``OUT/curves_headline.png``).
    Returns the worst exit status of those commands."""
    codes = [onebit_main(["report", str(out), "-o", str(out / "results.md")])]
    started = [n for n in names if (out / n).is_dir()]
    families = {model: [n for n in started if n.startswith(f"{model}_")] for model in MODELS}
    families["headline"] = [n for n in HEADLINE if n in started]
    for family, members in families.items():
        runs = [str(out / n) for n in members]
        if runs and any(r.records for r in find_runs(runs)):
            codes.append(onebit_main(["plot", *runs, "-o", str(out / f"curves_{family}.png")]))
    return max(codes)


def estimate(smoke: Path, todo: Sequence[Job], subset: int | None, epochs: int | None) -> str:
    """Training hours of ``todo`` from the seconds per image measured in the smoke tree
    ``smoke`` (same entries): s/image x training images x epochs, per run, summed."""
    measured = {}
    for group in group_runs(find_runs([smoke])):
        run = group[0]
        images = sum(r["images_per_s"] * r["seconds"] for r in run.records)
        if images:
            measured[run.recipe_name] = run.train_seconds / images
    images = subset or FMNIST_TRAIN_IMAGES
    lines = ["| entry | runs | s/epoch | epochs | hours |", "|---|--:|--:|--:|--:|"]
    total = 0.0
    for name in dict.fromkeys(job.entry.name for job in todo):
        runs = [j for j in todo if j.entry.name == name]
        if name not in measured:
            lines.append(f"| {name} | {len(runs)} | not measured | | |")
            continue
        n_epochs = (
            epochs or load_config(runs[0].entry.config, runs[0].entry.overrides).schedule.epochs
        )
        per_epoch = measured[name] * images
        hours = per_epoch * n_epochs * len(runs) / 3600
        total += hours
        lines.append(f"| {name} | {len(runs)} | {per_epoch:.0f} | {n_epochs} | {hours:.1f} |")
    lines.append(f"| **total** | {len(todo)} | | | **{total:.1f}** |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="scale every schedule to this many epochs")
    parser.add_argument("--subset", type=int, help="train on the first N training images")
    parser.add_argument("--eval-subset", type=int, help="evaluate on the first N test images")
    parser.add_argument("--seeds", type=int, default=3, help="runs per headline entry (3)")
    parser.add_argument(
        "--headline",
        type=lambda s: tuple(n for n in s.split(",") if n),
        default=HEADLINE,
        help=f"comma-separated entries trained --seeds times (default: {','.join(HEADLINE)})",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="PATTERN", help="entries to run (glob)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    parser.add_argument(
        "--out", type=Path, help="output tree (default: runs/fmnist_results/e<EPOCHS>[_n<SUBSET>])"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, train nothing")
    parser.add_argument("--no-report", action="store_true", help="skip onebit report / plot")
    parser.add_argument(
        "--estimate",
        type=Path,
        metavar="SMOKE_OUT",
        help="print the training hours of the runs asked for, from the s/image measured in "
        "the output tree of a smoke run; trains nothing",
    )
    parser.add_argument("--list", action="store_true", help="print the matrix and exit")
    args = parser.parse_args(argv)
    if args.out is None:
        tag = f"e{args.epochs or 'recipe'}" + (f"_n{args.subset}" if args.subset else "")
        args.out = ROOT / "runs" / "fmnist_results" / tag
    args.out = args.out.resolve()
    unknown = [n for n in args.headline if n not in {e.name for e in matrix()}]
    if unknown:
        parser.error(f"--headline {unknown[0]!r} is not an entry of the matrix (see --list)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    todo = jobs(args)
    if args.list:
        for entry in matrix():
            print(f"{entry.name:28} {entry.config.relative_to(ROOT)} {' '.join(entry.overrides)}")
        return 0
    if args.estimate:
        print(estimate(args.estimate, todo, args.subset, args.epochs))
        return 0
    if not todo:
        print(f"no entry matches --only {' '.join(args.only)} (see --list)", file=sys.stderr)
        return 2
    print(f"{len(todo)} runs into {args.out}", flush=True)
    failed = train_all(todo, args.dry_run)
    reported = 0
    if not args.dry_run and not args.no_report:
        reported = report_and_plot(args.out, [e.name for e in matrix()])
    for job in failed:
        print(f"FAILED: {shlex.join(['onebit', *job.args])}", file=sys.stderr)
    return 1 if failed else reported


if __name__ == "__main__":
    sys.exit(main())
