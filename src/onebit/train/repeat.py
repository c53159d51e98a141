"""Repeated runs: one recipe trained once per seed, and the mean ± std of the results.

``train_seeds(config, "runs/x", [0, 1, 2])`` trains into runs/x/seed0, runs/x/seed1, ... and
writes runs/x/summary.json with the final and the best top-1 of every run (BNEW reports
each number as the mean ± std of 5 such runs).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from onebit.config import Config, config_from_dict
from onebit.errors import CheckpointError, ConfigError
from onebit.train import distributed
from onebit.train.checkpoint import atomic_write_text
from onebit.train.trainer import RunDir, Trainer

# The most runs --runs N starts: N seeds are listed and N configs made before run 1.
MAX_RUNS = 1000


def parse_seeds(runs: int | None, seeds: str | None) -> list[int] | None:
    """``--runs N`` -> seeds 0..N-1; ``--seeds 0,1,2`` -> [0, 1, 2]; neither -> None. The
    seeds' values are checked as ``runtime.seed`` when the runs' configs are made
    (:func:`seed_config`)."""
    if runs is not None:
        if not 1 <= runs <= MAX_RUNS:
            raise ConfigError(f"--runs {runs}: give a number of runs from 1 to {MAX_RUNS}")
        return list(range(runs))
    if seeds is None:
        return None
    try:
        values = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r} is not a comma-separated list of integers") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"--seeds {seeds!r} repeats a seed")
    return values


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def seed_config(config: Config, out: str | Path, seed: int) -> Config:
    """``config`` for run ``seed`` of repeated runs into ``out``: ``runtime.seed`` = ``seed``,
    ``runtime.out`` = ``out/seed<k>``, read through the config schema again, so that a seed
    the schema does not accept is its ConfigError, as in a config file."""
    data = config.to_dict()
    data["runtime"].update(seed=seed, out=str(seed_dir(out, seed)))
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"--seeds: {err}") from None


def _stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one run) of ``values``."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(out: str | Path, seeds: list[int]) -> dict[str, Any]:
    """Final top-1 (the last epoch's ``val_top1``) and best top-1 (the test top-1 of the epoch
    ``best.safetensors`` holds, of the last phase, picked on ``best_split``: ``eval.select_on``)
    of each finished run ``out/seed<k>``, with mean and std over the runs."""
    final, best = [], []
    for seed in seeds:
        run = RunDir(seed_dir(out, seed))
        if not run.metrics.exists() or not run.last_json.exists():
            raise ConfigError(f"{run.path} holds no finished run to summarize")
        try:
            records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
            state = json.loads(run.last_json.read_text())
            progress, split = state["progress"], state.get("best_split", "test")
            test_top1 = {(r.get("phase", 0), r["epoch"]): r["val_top1"] for r in records}
            final.append(records[-1]["val_top1"])
            best.append(test_top1[progress["phase"], progress["best_epoch"]])
        except (OSError, ValueError, LookupError, TypeError, AttributeError) as err:
            detail = f"{type(err).__name__}: {str(err)[:160]}"
            raise CheckpointError(
                f"cannot summarize {run.path}: its metrics.jsonl or last.json is unreadable or "
                f"damaged ({detail}); remove that directory and rerun with --resume to train "
                f"seed {seed} again"
            ) from None
    return {
        "seeds": seeds,
        "final_top1": _stats(final),
        "best_top1": _stats(best),
        "best_split": split,
    }


def summary_line(summary: dict[str, Any], path: Path) -> str:
    f, b = summary["final_top1"], summary["best_top1"]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    return (
        f"{len(summary['seeds'])} runs (seeds {seeds}): final top-1 {f['mean']:.2f} ± "
        f"{f['std']:.2f}%, best epoch (picked on {summary['best_split']}) {b['mean']:.2f} ± "
        f"{b['std']:.2f}%; {path}"
    )


def train_seeds(
    config: Config, out: str | Path, seeds: list[int], resume: bool = False
) -> dict[str, Any]:
    """Train ``config`` once per seed into ``out/seed<k>`` (``runtime.seed = k``), then write
    ``out/summary.json`` (:func:`summarize`) and return it. ``resume`` continues unfinished
    runs and skips finished ones."""
    configs = [seed_config(config, out, seed) for seed in seeds]  # all checked before run 1
    for run_config in configs:
        Trainer(run_config, RunDir(run_config.runtime.out)).fit(resume=resume)
    summary = summarize(out, seeds)
    if distributed.is_main():  # under torchrun, process 0 alone writes
        atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
