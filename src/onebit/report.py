"""Results of training runs: read run directories, group the seeds of one recipe, and write
the Markdown table of ``onebit report``.

A run directory is one written by ``onebit train`` (config.yaml, metrics.jsonl, ...; see
docs/training.md). A directory that is not a run is searched for runs below it, so
``<out>/seed0``, ``<out>/seed1``, ... (``onebit train --runs N``, the results runner) and
whole output trees are accepted. Runs whose configs are equal except the ``runtime``
section (seed, device, out, ...) are repetitions of one recipe: they form one row, with
mean ± sample standard deviation over the runs.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from onebit.config import Config, config_from_dict, read_yaml
from onebit.errors import CheckpointError, ImportNotAllowedError, OneBitError

SEED_DIR = re.compile(r"seed\d+")

# Keys of a metrics record (metrics.jsonl) that are figures of the epoch, not schedule values;
# so are ``val_*`` and ``heldout_*``. Every other number a record holds is a schedule value: a
# binarizer's state under its log name (``tau``, ``ede_t``, ...) or a technique's
# (``bnew_reg``, ``bmd_beta``).
RECORD_FIGURES = frozenset(
    (
        "phase",
        "epoch",
        "step",
        "lr",
        "train_loss",
        "train_top1",
        "seconds",
        "images_per_s",
        "compile_seconds",
        "wall_seconds",
    )
)


# Keys of a metrics record that hold text; every figure (RECORD_FIGURES, val_*, heldout_*)
# holds a number.
RECORD_TEXT = frozenset(("phase_name", "precision", "machine"))


def is_record(record: Any) -> bool:
    """Whether ``record`` (a parsed line of metrics.jsonl) is a whole epoch record: an object
    with an integer ``epoch`` whose figures are numbers and whose text keys are text."""
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        return False
    for key, value in record.items():
        if key in RECORD_TEXT and not isinstance(value, str):
            return False
        if _is_figure(key) and not _is_number(value):
            return False
    return True


def is_schedule_value(key: str, value: Any) -> bool:
    """Whether ``key: value`` of a metrics record is a schedule value (see RECORD_FIGURES)."""
    return not _is_figure(key) and _is_number(value)


def _is_figure(key: str) -> bool:
    return key in RECORD_FIGURES or key.startswith(("val_", "heldout_"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Run:
    """One run directory: its resolved config and its metrics (one record per epoch)."""

    path: Path
    config: Config
    records: list[dict[str, Any]]

    @property
    def name(self) -> str:
        """The directory name; ``parent/seedK`` for a seed directory of a repeated run."""
        if SEED_DIR.fullmatch(self.path.name):
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name

    @property
    def recipe_name(self) -> str:
        """The name without the seed directory: what the runs of one row share."""
        return self.path.parent.name if SEED_DIR.fullmatch(self.path.name) else self.path.name

    @property
    def recipe_key(self) -> str:
        """What the runs of one recipe share, as canonical JSON: the config of every phase
        without its ``runtime`` section, each model section with the builder's defaults
        filled in (a run saved by an older onebit lists only the options it was given; a
        newer one lists them all). :func:`group_runs` adds the precision."""
        key = []
        for config in self.config.phase_configs():
            data = config.to_dict()
            del data["runtime"], data["phases"]
            data["model"] = _with_model_defaults(data["model"])
            key.append(data)
        key.append([phase.name for phase in self.config.phases or ()])
        return json.dumps(key, sort_keys=True, default=str)

    @property
    def precisions(self) -> list[str]:
        """The precisions the epochs trained in (``precision`` of the records: fp32, bf16)."""
        return list(dict.fromkeys(self.values("precision")))

    @property
    def epochs(self) -> int:
        """Epochs the config asks for, summed over its phases."""
        return sum(phase.schedule.epochs for phase in self.config.phase_configs())

    @property
    def epochs_done(self) -> int:
        """Epochs trained and evaluated so far, over all phases."""
        return len(self.values("val_top1"))

    @property
    def finished(self) -> bool:
        """Whether every epoch the config asks for has been trained."""
        return self.epochs_done >= self.epochs

    def values(self, key: str) -> list[float]:
        """``key`` of every epoch record that has it, in order."""
        return [r[key] for r in self.records if key in r]

    @property
    def final_top1(self) -> float | None:
        """The last epoch's test top-1."""
        top1 = self.values("val_top1")
        return top1[-1] if top1 else None

    def _latest_phase(self) -> list[dict[str, Any]]:
        """The records of the latest phase (an earlier phase's model is not the recipe's
        result)."""
        phase = self.records[-1].get("phase", 0) if self.records else 0
        return [r for r in self.records if r.get("phase", 0) == phase]

    @property
    def picked_on(self) -> str:
        """Where the best epoch is picked: "val", the split held out of the training images
        (``data.val_split``), where the records have ``heldout_top1``; else "test"."""
        records = self._latest_phase()
        return "val" if records and all("heldout_top1" in r for r in records) else "test"

    @property
    def best_record(self) -> dict[str, Any] | None:
        """The latest phase's epoch with the highest top-1 on :attr:`picked_on`'s split."""
        records = self._latest_phase()
        key = "heldout_top1" if self.picked_on == "val" else "val_top1"
        return max(records, key=lambda r: r[key]) if records else None

    @property
    def best_top1(self) -> float | None:
        """The test top-1 of :attr:`best_record`."""
        best = self.best_record
        return None if best is None else best["val_top1"]

    @property
    def train_seconds(self) -> float:
        """Training time: the sum of the epochs' ``seconds`` (evaluation not included)."""
        return sum(self.values("seconds"))

    @property
    def wall_seconds(self) -> float | None:
        """Wall time of the epochs (training, statistics, evaluation) summed; None when an
        epoch did not record it (runs trained before it was recorded)."""
        seconds = self.values("wall_seconds")
        return sum(seconds) if seconds and len(seconds) == len(self.records) else None

    @property
    def images_per_s(self) -> float | None:
        """Training images per second over the whole run (total images / total seconds)."""
        seconds = self.train_seconds
        if not seconds:
            return None
        images = sum(r["images_per_s"] * r["seconds"] for r in self.records if "seconds" in r)
        return images / seconds


def read_run(path: str | Path) -> Run:
    """The run in directory ``path`` (config.yaml and, once an epoch has finished,
    metrics.jsonl); CheckpointError if either file is unreadable."""
    path = Path(path)
    try:
        # a run's saved config, not a recipe: it may name only modules already imported
        file = path / "config.yaml"
        config = config_from_dict(read_yaml(file), source=str(file))
    except ImportNotAllowedError:
        raise
    except OneBitError as err:
        raise CheckpointError(f"{path}: its config.yaml is not a valid config ({err})") from None
    metrics = path / "metrics.jsonl"
    records, dropped = [], []
    if metrics.exists():
        try:
            text = metrics.read_bytes().decode("utf-8", "replace")
        except OSError as err:
            raise CheckpointError(
                f"cannot read {metrics}: {err.strerror or err}; make it a readable file or "
                "leave the run out"
            ) from None
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if is_record(record):
                records.append(record)
            else:
                dropped.append(number)
    if dropped:  # e.g. the partial last line of a run stopped in the middle of an append
        warnings.warn(
            f"{metrics}: skipped line(s) {', '.join(map(str, dropped[:5]))}, not a whole epoch "
            "record",
            stacklevel=2,
        )
    return Run(path, config, records)


def _run_dirs(path: Path) -> list[Path]:
    if (path / "config.yaml").is_file():
        return [path]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        found += _run_dirs(child)
    return found


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The runs in ``paths``: each a run directory, or a directory searched for run
    directories below it (sorted by path). CheckpointError for a path that holds none."""
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is not a directory; give run directories of onebit train"
            )
        dirs = _run_dirs(path)
        if not dirs:
            raise CheckpointError(f"{path} holds no run directory (a folder with config.yaml)")
        runs += [read_run(d) for d in dirs]
    return runs


def _with_model_defaults(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` with every option it does not set at its builder's default (as the trainer
    resolves it); as it is where the model is not registered in this process."""
    from onebit.models import model_entry

    try:
        defaults = model_entry(model["name"]).defaults
    except (OneBitError, KeyError):
        return model
    return {**defaults, **model}


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs of the same recipe (:attr:`Run.recipe_key`: configs equal but for ``runtime``)
    trained in the same precision together, in the order each group first appears. Runs in
    bf16 and in fp32 are not repetitions of each other. A run whose epochs did not record
    their precision (trained before onebit recorded it) joins its recipe's runs where those
    trained in one precision; else it is a group of its own."""
    by_recipe: dict[str, dict[tuple[str, ...], list[int]]] = {}
    for i, run in enumerate(runs):
        by_recipe.setdefault(run.recipe_key, {}).setdefault(tuple(run.precisions), []).append(i)
    groups = []
    for by_precision in by_recipe.values():
        unrecorded = by_precision.pop((), [])
        if unrecorded and len(by_precision) == 1:
            (known,) = by_precision.values()
            known[:] = sorted(known + unrecorded)
        elif unrecorded:
            by_precision[()] = unrecorded
        groups += by_precision.values()
    return [[runs[i] for i in group] for group in sorted(groups)]


def group_label(group: Sequence[Run]) -> str:
    """The recipe name the runs share, else their names' common prefix without a trailing
    ``seed`` (``x``, ``x_seed1`` and ``x_seed2`` are ``x``), else the first's."""
    names = [r.recipe_name for r in group]
    if len(set(names)) == 1:
        return names[0]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return re.sub(r"[_\-./]seed$", "", prefix.rstrip("_-./")) or names[0]


# --------------------------------------------------------------------------- model figures


@dataclass(frozen=True)
class ModelFigures:
    """What a row says about the model itself: bits, parameters, OPs, packed file size."""

    bits: str
    params: int
    ops: float
    packed_bytes: int  # bytes of the onebit.deploy.export file


def model_figures(config: Config) -> ModelFigures:
    """Figures of ``config``'s model at its dataset's input size (see :func:`_figures`)."""
    from onebit.data import dataset_input_size

    options = json.dumps(config.model, sort_keys=True)
    return _figures(options, dataset_input_size(config.data))


@cache
def _figures(options: str, input_size: tuple[int, int, int]) -> ModelFigures:
    """Rebuild the model ``create_model(**options)``: bits of its binary layers, ``count_ops``
    (params, OPs = BOPs/64 + FLOPs per image of ``input_size``) and the size of the file
    ``onebit.deploy.export`` writes (exported to a temporary file; it does not depend on the
    weights' values, so an untrained model of the same options gives the trained size)."""
    from onebit.deploy import export
    from onebit.models import create_model
    from onebit.nn import is_binary
    from onebit.profile import count_ops

    model = create_model(**json.loads(options))
    bits = sorted({m.bits for m in model.modules() if is_binary(m)})
    ops = count_ops(model, input_size)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "model.onebit"
        export(model, file)
        packed = file.stat().st_size
    return ModelFigures("/".join(bits) or "32w32a", ops.params, ops.ops, packed)


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One row of the report: a recipe and its runs' figures."""

    label: str
    runs: list[Run]  # the runs its figures are over (the finished ones, where any are)
    figures: ModelFigures
    cells: dict[str, str]  # column -> text, for every column of COLUMNS


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"m ± s"`` with the sample standard deviation (n - 1); the value alone for one run;
    ``"—"`` for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    if not seconds:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 60 else f"{minutes / 60:.2f} h"


def _epochs(group: Sequence[Run]) -> str:
    done = sorted({r.epochs_done for r in group})
    target = group[0].epochs
    text = str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}"
    return text if done[0] == target else f"{text}/{target}"


COLUMNS = (
    "run",
    "model",
    "method",
    "bits",
    "epochs",
    "runs",
    "params",
    "OPs",
    "packed (bytes)",
    "train images",
    "BN stats",
    "final top-1 (%)",
    "best epoch top-1 (%)",
    "picked on (held-out top-1 %)",
    "train time",
    "img/s",
    "wall time",
    "precision",
    "machine",
)


def _train_images(data) -> str:
    """The training images a run saw: ``data.subset`` (taken after the held-out split), else all
    of them less the ``data.val_split`` held out (a count, or a fraction of them)."""
    if data.subset is not None:
        return f"{data.subset:,}"
    held = data.val_split
    if not held:
        return "all"
    return f"all − {held:,} held out" if isinstance(held, int) else f"all − {held:.0%} held out"


def _bn_stats(config: Config) -> str:
    """How the row's BatchNorm statistics were evaluated: the stored EMA, or re-estimated."""
    batches = config.eval.bn_recalibrate
    return f"recalibrated ({batches} batches)" if batches else "stored"


def _picked_on(group: Sequence[Run]) -> str:
    """``test``, or ``val (m ± s)``: the held-out top-1 of the runs' best epochs."""
    heldout = [r.best_record["heldout_top1"] for r in group if r.picked_on == "val"]
    return f"val ({mean_std(heldout)})" if heldout else "test"


def _wall_time(group: Sequence[Run]) -> str:
    """The runs' mean wall time, where every epoch of every run recorded it."""
    walls = [r.wall_seconds for r in group]
    return "—" if None in walls else _duration(statistics.mean(walls))


def _recorded(group: Sequence[Run], key: str) -> str:
    """Every value of ``key`` the runs' epochs recorded, in order of first use, and "not
    recorded" where some epochs did not record it (trained before onebit recorded it)."""
    values = list(dict.fromkeys(v for r in group for v in r.values(key)))
    if any(len(r.values(key)) < len(r.records) for r in group):
        values.append("not recorded")
    return "; ".join(values) or "not recorded"


def report_rows(runs: Sequence[Run]) -> list[Row]:
    """One :class:`Row` per recipe (see :func:`group_runs`), cells formatted for Markdown."""
    rows = []
    for runs_of_recipe in group_runs(runs):
        # where some runs of a recipe have finished, its figures are theirs alone: a mean over
        # a finished run and one at its third epoch would describe neither
        group = [r for r in runs_of_recipe if r.finished] or runs_of_recipe
        unfinished = len(runs_of_recipe) - len(group)
        config = group[0].config.phase_configs()[-1]  # the model the recipe ends with
        figures = model_figures(config)
        speeds = [s for s in (r.images_per_s for r in group) if s is not None]
        label = group_label(runs_of_recipe)
        cells = {
            "run": label,
            "model": config.model["name"],
            "method": str(config.model.get("method", "")),
            "bits": figures.bits,
            "epochs": _epochs(group),
            "runs": f"{len(group)} (+{unfinished} unfinished)" if unfinished else str(len(group)),
            "params": _si(figures.params),
            "OPs": _si(figures.ops),
            "packed (bytes)": f"{figures.packed_bytes:,}",
            "train images": _train_images(config.data),
            "BN stats": _bn_stats(config),
            "final top-1 (%)": mean_std([r.final_top1 for r in group if r.final_top1 is not None]),
            "best epoch top-1 (%)": mean_std(
                [r.best_top1 for r in group if r.best_top1 is not None]
            ),
            "picked on (held-out top-1 %)": _picked_on(group),
            "train time": _duration(statistics.mean(r.train_seconds for r in group)),
            "img/s": f"{statistics.mean(speeds):.0f}" if speeds else "—",
            "wall time": _wall_time(group),
            "precision": _recorded(group, "precision"),  # one a row: see group_runs
            "machine": _recorded(group, "machine"),
        }
        rows.append(Row(label, list(group), figures, cells))
    return rows


NOTES = """\
top-1: test accuracy (`val_top1`), mean ± sample standard deviation over the row's runs (runs
whose configs differ only in `runtime`: seed, device, ...). final = the last epoch: the figure
to quote. best epoch = the test top-1 of the epoch picked on: `val`, the highest top-1 on the
split held out of the training images (`data.val_split`; its figure in brackets), where the
runs have one; else `test`, the highest test top-1 (optimistic; shown for comparison with
papers that report it). BN stats: evaluated with the stored BatchNorm running statistics, or
with statistics re-estimated from N training batches before each evaluation
(`eval.bn_recalibrate`). train images: `data.subset`, or all, less the `data.val_split` held
out.
epochs: completed (of the recipe's, while a run is unfinished). runs: the runs the figures
are over; where some runs of a recipe have finished, the unfinished ones are left out of its
figures and counted as "+N unfinished". params and OPs (= BOPs/64
+ FLOPs per image at the dataset's input size) as `onebit ops`; packed: bytes of the file
`onebit export` writes (binary weights at 1 bit, everything else fp32). train time: sum of the
epochs' training seconds (evaluation excluded), mean over the runs; img/s: training images per
second; wall time: the epochs' whole time (training, BN statistics, evaluation; — for runs that
did not record it); precision: what the epochs trained in (fp32, or bf16 autocast; runs in
different precisions are different rows); machine: what the epochs ran on (CPU model, cores
and threads, or GPU). "not recorded": epochs trained before onebit recorded it.
"""


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (numeric columns right-aligned)."""
    left = {"run", "model", "method", "bits"}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in left else "--:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row.cells[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def report(paths: Sequence[str | Path]) -> str:
    """The Markdown of ``onebit report``: the table of the runs in ``paths``, then notes."""
    return markdown_table(report_rows(find_runs(paths))) + "\n\n" + NOTES
