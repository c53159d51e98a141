"""Training curves of runs as one PNG (``onebit plot``): loss and top-1 against epoch, the
runs overlaid by name, and the schedules on a third panel: the lr, and on a second axis every
other value the trainer logs per epoch (ReCU ``tau``, IR-Net ``ede_t`` / ``ede_k``, ...).

matplotlib is the optional ``plot`` extra (``pip install -e ".[plot]"`` in a clone); the figure is
drawn without pyplot (no display, no global backend change). Each argument becomes one curve
per recipe it holds (see :func:`onebit.report.group_runs`): the runs of one recipe (seeds)
are drawn as their mean with a band from their minimum to their maximum.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from onebit.errors import CheckpointError, ConfigError, OneBitError
from onebit.io import atomic_write
from onebit.report import Run, find_runs, group_label, group_runs, is_schedule_value

# (metrics key, panel, line style) of the curves drawn per recipe on the first three panels
SERIES = (
    ("train_loss", 0, "--"),
    ("val_loss", 0, "-"),
    ("train_top1", 1, "--"),
    ("val_top1", 1, "-"),
    ("val_top1_stored", 1, ":"),  # runs with eval.bn_recalibrate: the stored statistics' figure
    ("heldout_top1", 1, "-."),  # runs with data.val_split: the split held out of training
    ("lr", 2, "-"),
)
SCHEDULE_STYLES = (":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def schedule_keys(curves: Sequence[Curve]) -> list[str]:
    """The schedule values the runs logged (see :func:`onebit.report.is_schedule_value`),
    sorted."""
    return sorted(
        {
            key
            for curve in curves
            for run in curve.runs
            for record in run.records
            for key, value in record.items()
            if is_schedule_value(key, value)
        }
    )


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.ticker
    except ImportError:
        raise OneBitError(
            'onebit plot needs matplotlib: pip install -e ".[plot]" in a clone '
            "(or pip install matplotlib)"
        ) from None
    return matplotlib


@dataclass
class Curve:
    """One recipe's runs under one name."""

    label: str
    runs: list[Run]

    def series(self, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
        """(epochs, mean, min, max) of ``key`` over the runs, at every epoch one of them has.

        The x value is the record's position in metrics.jsonl (= the epoch for one phase).
        """
        per_epoch: dict[int, list[float]] = {}
        for run in self.runs:
            for i, record in enumerate(run.records, 1):
                if key in record:
                    per_epoch.setdefault(i, []).append(record[key])
        epochs = sorted(per_epoch)
        values = [per_epoch[e] for e in epochs]
        return (
            epochs,
            [statistics.mean(v) for v in values],
            [min(v) for v in values],
            [max(v) for v in values],
        )


def curves(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Curve]:
    """One :class:`Curve` per recipe in each of ``paths``; ``labels`` (one per path) replace
    the run names (``label: name`` where a path holds several recipes)."""
    if labels and len(labels) != len(paths):
        raise ConfigError(
            f"--label was given {len(labels)} times for {len(paths)} run directories; "
            "give one label per RUN_DIR or none"
        )
    result = []
    for i, path in enumerate(paths):
        groups = group_runs(find_runs([path]))
        for group in groups:
            label = group_label(group)
            if labels:
                label = labels[i] if len(groups) == 1 else f"{labels[i]}: {label}"
            result.append(Curve(label, group))
    return result


def plot_runs(
    paths: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Draw the curves of the runs in ``paths`` (see the module doc) into the PNG ``out``.

    Panels: loss (train dashed, test solid), top-1 % (the same; the held-out split dash-dot
    where runs hold one out, ``data.val_split``), lr (and, on a second axis,
    the schedule values the runs log, see :func:`schedule_keys`). Returns ``out``.
    """
    mpl = _matplotlib()

    drawn = [c for c in curves(paths, labels) if any(r.records for r in c.runs)]
    if not drawn:
        raise CheckpointError(
            f"no run in {', '.join(map(str, paths))} has finished an epoch yet (metrics.jsonl)"
        )
    fig = mpl.figure.Figure(figsize=(17, 5), layout="constrained")  # no pyplot: no global state
    axes = fig.subplots(1, 3)
    right = axes[2].twinx()
    keys = schedule_keys(drawn)
    styles = dict(zip(keys, itertools.cycle(SCHEDULE_STYLES), strict=False))
    series = [*SERIES, *((key, 3, styles[key]) for key in keys)]
    panels = [*axes, right]
    colors = mpl.colormaps["tab10" if len(drawn) <= 10 else "tab20"]
    handles = []
    for n, curve in enumerate(drawn):
        color = colors(n % colors.N)
        for key, panel, style in series:
            epochs, mean, low, high = curve.series(key)
            if not epochs:
                continue
            # a marker on every point of a short curve: one epoch is a point, not a line
            marker = "o" if len(epochs) <= 3 else None
            (line,) = panels[panel].plot(
                epochs, mean, ls=style, color=color, label=curve.label, marker=marker, ms=4
            )
            if key == "val_top1":
                handles.append(line)
            if len(curve.runs) > 1:
                panels[panel].fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)
    for ax, ylabel in zip(axes, ("loss (log)", "top-1 (%)", "learning rate"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_title("loss (dashed: train, solid: test)")
    top1 = "top-1 (dashed: train, solid: test, dotted: test, stored BN statistics"
    if any(c.series("heldout_top1")[0] for c in drawn):  # one size smaller to fit its panel
        axes[1].set_title(top1 + ", dash-dot: held out)", fontsize="medium")
    else:
        axes[1].set_title(top1 + ")")
    if keys:
        values = [v for c in drawn for k in keys for v in c.series(k)[1]]
        if min(values) > 0 and max(values) / min(values) > 100:  # e.g. EDE t: 1e-3 .. 10
            right.set_yscale("log")
        right.set_ylabel(", ".join(keys))
        legend = [right.plot([], [], ls=styles[k], color="gray")[0] for k in keys]
        right.legend(legend, keys, loc="upper center", fontsize="small")
        axes[2].set_title(f"lr (solid, left); {', '.join(keys)} (right)")
    else:
        right.set_axis_off()
        axes[2].set_title("lr")
    fig.legend(handles=handles, loc="outside right center", fontsize="small", title="runs")
    out = Path(out)
    kind = out.suffix.lower().lstrip(".")
    formats = fig.canvas.get_supported_filetypes()
    if kind not in formats:
        raise ConfigError(
            f"-o {out}: cannot tell the image format from {out.suffix or 'no suffix'!r}; "
            f"name the file .png, .pdf, .svg or another of: {', '.join(sorted(formats))}"
        )
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format=kind, dpi=110))
