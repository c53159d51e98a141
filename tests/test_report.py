"""onebit report / onebit plot on real run directories, and the Fashion-MNIST results runner
(benchmarks/fmnist_results.py) that trains them: the tree below is trained by the runner's own
jobs through ``onebit train``, then reported and plotted."""

import dataclasses
import importlib.util
import json
import os
import statistics
import struct
import sys
from pathlib import Path

import pytest
import torch

from onebit.cli import main
from onebit.deploy import export
from onebit.machine import cpu_name, describe
from onebit.models import create_model, model_entry
from onebit.plot import schedule_keys
from onebit.profile import count_ops
from onebit.report import find_runs, group_label, group_runs, report, report_rows
from onebit.train import load_model

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.batch_size=16", "data.eval_batch_size=16", "runtime.device=cpu"]


def _runner():
    spec = importlib.util.spec_from_file_location(
        "fmnist_results", ROOT / "benchmarks" / "fmnist_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


RUNNER = _runner()
# ResNet-20 ReCU twice (seeds 0, 1: the headline layout), IR-Net once; 2 epochs of 32 images
RUNNER_ARGS = [
    "--only",
    "resnet20_recu",
    "--only",
    "resnet20_irnet",
    "--headline",
    "resnet20_recu",
    "--seeds",
    "2",
    "--epochs",
    "2",
    "--subset",
    "32",
    "--eval-subset",
    "32",
    *(a for o in TINY for a in ("--set", o)),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """OUT/resnet20_irnet/seed0, OUT/resnet20_recu/seed0 and seed1, each trained by the
    runner's ``onebit train`` command line (in this process rather than a subprocess)."""
    out = tmp_path_factory.mktemp("results")
    jobs = RUNNER.jobs(RUNNER.parse_args([*RUNNER_ARGS, "--out", str(out)]))
    # One thread: at batch 16 a second one gains nothing, and on a loaded 2-core machine two
    # threads per process oversubscribe it (measured: 54 s against 6 s for one of these runs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert [(j.entry.name, j.seed) for j in jobs] == [
        ("resnet20_irnet", 0),
        ("resnet20_recu", 0),
        ("resnet20_recu", 1),
    ]
    try:
        for job in jobs:
            assert main(list(job.args)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _fake_run(path: Path, config: str, records: list[dict]) -> Path:
    """A run directory with this ``config.yaml`` text and these epoch records."""
    path.mkdir()
    (path / "config.yaml").write_text(config)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_runner_jobs_scale_the_schedule_and_set_seeds(tmp_path):
    args = RUNNER.parse_args(["--only", "vgg_small_fp", "--epochs", "4", "--out", str(tmp_path)])
    (job,) = RUNNER.jobs(args)
    assert job.entry.config.name == "vgg_small_irnet.yaml"  # no own fp recipe: the base one
    sets = [job.args[i + 1] for i, a in enumerate(job.args) if a == "--set"]
    assert sets[:3] == ["model.method=fp", "model.bits=32w32a", "schedule.epochs=4"]
    assert sets[-1] == "runtime.seed=0" and job.run_dir == tmp_path / "vgg_small_fp" / "seed0"
    entries = {e.name for e in RUNNER.matrix()}
    models, methods = RUNNER.MODELS, RUNNER.METHODS
    assert {f"{m}_{k}" for m in models for k in methods} <= entries


def test_runner_skips_finished_runs_then_reports_and_plots(tree, capsys):
    assert RUNNER.main([*RUNNER_ARGS, "--out", str(tree)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done, skipped") == 3 and "train\n" not in printed
    assert "| resnet20_recu |" in (tree / "results.md").read_text()
    for name in ("curves_resnet20.png", "curves_headline.png"):
        assert (tree / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rows_numbers(tree):
    runs = find_runs([tree])  # a parent folder: the run directories below it
    assert [r.name for r in runs] == [
        "resnet20_irnet/seed0",
        "resnet20_recu/seed0",
        "resnet20_recu/seed1",
    ]
    irnet, recu = report_rows(runs)
    assert (irnet.label, recu.label) == ("resnet20_irnet", "resnet20_recu")
    assert [len(irnet.runs), len(recu.runs)] == [1, 2]
    final = [_records(tree / "resnet20_recu" / s)[-1]["val_top1"] for s in ("seed0", "seed1")]
    best = [
        max(r["val_top1"] for r in _records(tree / "resnet20_recu" / s)) for s in ("seed0", "seed1")
    ]
    assert recu.cells["final top-1 (%)"] == (
        f"{statistics.mean(final):.2f} ± {statistics.stdev(final):.2f}"
    )
    assert recu.cells["best epoch top-1 (%)"] == (
        f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}"
    )
    assert recu.cells["picked on (held-out top-1 %)"] == "test"
    assert (
        irnet.cells["final top-1 (%)"]
        == f"{_records(tree / 'resnet20_irnet/seed0')[-1]['val_top1']:.2f}"
    )
    model, config = load_model(tree / "resnet20_recu" / "seed0")
    ops = count_ops(model, (1, 32, 32))
    assert recu.figures.params == ops.params == sum(p.numel() for p in model.parameters())
    assert recu.figures.ops == ops.ops and recu.figures.bits == "1w1a"
    exported = tree / "recu.onebit"
    export(model, exported)
    assert recu.figures.packed_bytes == exported.stat().st_size
    assert recu.cells["packed (bytes)"] == f"{exported.stat().st_size:,}"
    fp = create_model(**{**config.model, "method": "fp", "bits": "32w32a"})
    assert recu.figures.packed_bytes * 10 < sum(p.numel() for p in fp.parameters()) * 4
    seconds = [
        sum(r["seconds"] for r in _records(tree / "resnet20_recu" / s)) for s in ("seed0", "seed1")
    ]
    assert recu.runs[0].train_seconds == pytest.approx(seconds[0])
    assert recu.cells["epochs"] == "2" and recu.cells["runs"] == "2"


def test_report_cli_writes_markdown_and_groups_seed_dirs(tree, tmp_path, capsys):
    out = tmp_path / "results.md"
    seeds = [str(tree / "resnet20_recu" / s) for s in ("seed0", "seed1")]
    assert main(["report", *seeds, "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run | model | method | bits |")
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 1 and rows[0].startswith("| resnet20_recu | resnet20 | recu | 1w1a |")
    assert main(["report", str(tree / "resnet20_irnet")]) == 0  # the folder of --runs
    assert "| resnet20_irnet | resnet20 | irnet |" in capsys.readouterr().out
    assert report([tree]).count("\n| resnet20_") == 2


def test_report_shows_the_machine_and_wall_time_each_epoch_recorded(tree, tmp_path):
    source = tree / "resnet20_irnet" / "seed0"
    records = _records(source)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, 1 thread"  # the tree trains on one
    assert [r["machine"] for r in records] == [machine] * 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert describe(torch.device("cpu"), processes=4) == machine[:-8] + "2 threads x4 processes"
    finally:
        torch.set_num_threads(threads)
    for r in records:  # the whole epoch: at least its training, and its evaluation besides
        assert r["wall_seconds"] > r["seconds"] > 0
    assert [r["precision"] for r in records] == ["fp32"] * 2
    (row,) = report_rows(find_runs([source]))
    assert row.cells["precision"] == "fp32"
    assert row.cells["machine"] == machine

    # wall time: the sum over a run's epochs, the mean over its seeds; in s, min, then h
    config = (source / "config.yaml").read_text()
    cases = [
        ([(12.3, 17.4)], "30 s"),
        ([(50.0, 70.6)], "2.0 min"),
        ([(40.0, 50.0), (60.0, 90.0)], "2.0 min"),  # 90 s and 150 s
        ([(3000.0, 4500.0)], "2.08 h"),  # 125 min
    ]
    for i, (seeds, expected) in enumerate(cases):
        timed = [
            _fake_run(
                tmp_path / f"timed{i}_{seed}",
                config,
                [{**r, "wall_seconds": w} for r, w in zip(records, walls, strict=True)],
            )
            for seed, walls in enumerate(seeds)
        ]
        (row,) = report_rows(find_runs(timed))
        assert (row.cells["runs"], row.cells["wall time"]) == (str(len(seeds)), expected)

    # a run trained before the record existed, then resumed on another machine
    first = {k: v for k, v in records[0].items() if k not in ("machine", "wall_seconds")}
    second = {**records[1], "machine": "NVIDIA H200"}
    old = _fake_run(tmp_path / "old", (source / "config.yaml").read_text(), [first, second])
    (row,) = report_rows(find_runs([old]))
    assert row.cells["wall time"] == "—"
    assert row.cells["machine"] == "NVIDIA H200; not recorded"
    assert "| wall time | precision | machine |" in report([old])

    # the same recipe trained in bf16 is another row, not a second seed of the fp32 one
    bf16_records = [{**r, "precision": "bf16"} for r in records]
    bf16 = _fake_run(tmp_path / "bf16", (source / "config.yaml").read_text(), bf16_records)
    rows = report_rows(find_runs([source, bf16]))
    assert [(len(r.runs), r.cells["precision"]) for r in rows] == [(1, "fp32"), (1, "bf16")]


def test_report_an_unfinished_run_shows_its_epochs(tree, tmp_path):
    source = tree / "resnet20_irnet" / "seed0"
    config = (source / "config.yaml").read_text()
    partial = _fake_run(tmp_path / "partial", config, _records(source)[:1])
    (row,) = report_rows(find_runs([partial]))
    assert row.cells["epochs"] == "1/2"
    first = _records(source)[0]["val_top1"]
    assert row.cells["final top-1 (%)"] == f"{first:.2f}" and row.cells["runs"] == "1"
    # beside a finished run of the recipe, it is left out of the figures and counted apart
    (row,) = report_rows(find_runs([source, partial]))
    assert row.label == "resnet20_irnet" and [r.path for r in row.runs] == [source]
    assert row.cells["runs"] == "1 (+1 unfinished)" and row.cells["epochs"] == "2"
    assert row.cells == {**report_rows(find_runs([source]))[0].cells, "runs": "1 (+1 unfinished)"}
    partial_too = _fake_run(tmp_path / "partial_too", config, _records(source)[:1])
    (row,) = report_rows(find_runs([partial, partial_too]))  # none finished: all of them
    assert row.cells["runs"] == "2" and row.cells["epochs"] == "1/2"


def test_report_a_phased_recipe_describes_its_last_phase(tree, tmp_path):
    """A two-phase recipe (binary activations with FP weights, then 1w1a) is reported with the
    model it ends with and the epochs of all its phases."""
    import yaml

    run = tmp_path / "phased"
    run.mkdir()
    source = tree / "resnet20_irnet" / "seed0"
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["model"]["bits"] = "32w1a"
    config["phases"] = [
        {"name": "activations"},
        {"name": "both", "overrides": {"model": {"bits": "1w1a"}, "schedule": {"epochs": 1}}},
    ]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*records, {**records[-1], "epoch": 1}])
    )
    (row,) = report_rows(find_runs([run]))
    assert row.cells["bits"] == "1w1a" and row.cells["epochs"] == "3"
    # OPs of the 1w1a network (the FP-weight first phase would count its convs as FLOPs)
    assert row.cells["OPs"] == report_rows(find_runs([source]))[0].cells["OPs"]


def test_bad_run_dirs_are_one_line_errors(tree, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "not a directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "holds no run directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    source = tree / "resnet20_recu" / "seed0"
    (broken / "config.yaml").write_text((source / "config.yaml").read_text())
    # a partial last line (a run stopped in the middle of an append), bytes that are not UTF-8
    first = (source / "metrics.jsonl").read_text().splitlines()[0]
    # and hand-edited records whose figures are not numbers or whose machine is not text
    record = json.loads(first)
    edited = [{**record, "val_top1": "91.2"}, {**record, "seconds": True}, {**record, "machine": 5}]
    (broken / "metrics.jsonl").write_bytes(
        f"{first}\n\xff\n".encode()
        + "".join(json.dumps(r) + "\n" for r in edited).encode()
        + b'{"epoch": 2, "va'
    )
    assert main(["report", str(broken)]) == 0
    captured = capsys.readouterr()
    assert "onebit: warning:" in captured.err and "skipped line(s) 2, 3, 4, 5, 6" in captured.err
    assert "| broken |" in captured.out
    (broken / "metrics.jsonl").write_text('{"epoch": 1, "val_top1"\n')
    assert main(["plot", str(broken), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "has finished an epoch yet" in err and err.count("onebit: error") == 1
    (broken / "config.yaml").write_text("model: [1, 2\n")
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{broken}: its config.yaml is not a valid config" in err
    assert not (tmp_path / "x.png").exists()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_png(tree, tmp_path, capsys):
    out = tmp_path / "curves.png"
    runs = [str(tree / "resnet20_recu"), str(tree / "resnet20_irnet")]
    assert main(["plot", *runs, "-o", str(out), "--label", "ReCU", "--label", "IR-Net"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert _png_size(out) == (17 * 110, 5 * 110)  # figsize (17, 5) inches at 110 dpi
    assert not list(tmp_path.glob("*.tmp"))
    from onebit.plot import curves

    drawn = curves(runs, ["ReCU", "IR-Net"])
    assert [c.label for c in drawn] == ["ReCU", "IR-Net"]
    assert schedule_keys(drawn) == ["ede_k", "ede_t", "tau"]
    epochs, mean, low, high = drawn[0].series("val_top1")
    per_seed = [
        [r["val_top1"] for r in _records(tree / "resnet20_recu" / s)] for s in ("seed0", "seed1")
    ]
    by_epoch = list(zip(*per_seed, strict=True))
    assert epochs == [1, 2] and mean == pytest.approx([statistics.mean(v) for v in by_epoch])
    assert low == [min(v) for v in by_epoch] and high == [max(v) for v in by_epoch]
    assert main(["plot", *runs, "-o", str(out), "--label", "one"]) == 2
    assert "--label was given 1 times for 2 run directories" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["plot", str(tree), "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[plot]"' in err


def test_group_runs_keys_on_everything_but_runtime(tree):
    runs = find_runs([tree / "resnet20_recu"])
    assert runs[0].config.runtime.seed == 0 and runs[1].config.runtime.seed == 1
    assert len(group_runs(runs)) == 1
    runs[1].config.optim.lr = 0.2
    assert len(group_runs(runs)) == 2


def test_group_label_names_the_recipe_of_seed_directories(tree):
    (run,) = find_runs([tree / "resnet20_irnet"])

    def label(*names):
        return group_label([dataclasses.replace(run, path=Path("/r") / n) for n in names])

    assert label("irnet/seed0", "irnet/seed1") == "irnet"  # OUT/seed<k> of --runs
    assert label("recu", "recu_seed1", "recu_seed2") == "recu"
    assert label("recu_seed1", "recu_seed2") == "recu"
    assert label("recu-seed1", "recu-seed2") == "recu"
    assert label("linseed1", "linseed2") == "linseed"  # "seed" only after a separator
    assert label("fp_a", "fp_b") == "fp"
    assert label("abc", "xyz") == "abc"


def test_runs_saved_by_an_older_onebit_join_their_recipe(tree, tmp_path):
    """An older onebit saved only the model options a recipe gave and recorded no precision:
    such a run is the same recipe as today's, and joins its one-precision row."""
    import yaml

    source = tree / "resnet20_irnet" / "seed0"
    config = yaml.safe_load((source / "config.yaml").read_text())
    defaults = model_entry("resnet20").defaults
    given = {k: v for k, v in config["model"].items() if k not in defaults or v != defaults[k]}
    assert len(given) < len(config["model"])  # today's config lists defaults too
    unrecorded = [{k: v for k, v in r.items() if k != "precision"} for r in _records(source)]
    old = _fake_run(tmp_path / "old", yaml.safe_dump({**config, "model": given}), unrecorded)
    (row,) = report_rows(find_runs([source, old]))
    assert row.cells["runs"] == "2" and row.cells["precision"] == "fp32; not recorded"
    (row,) = report_rows(find_runs([old]))
    assert row.cells["precision"] == "not recorded"
    # beside fp32 and bf16 runs of the recipe, which one it was is unknown: a row of its own
    bf16_records = [{**r, "precision": "bf16"} for r in _records(source)]
    bf16 = _fake_run(tmp_path / "bf16", (source / "config.yaml").read_text(), bf16_records)
    rows = report_rows(find_runs([old, source, bf16]))
    assert [(r.cells["runs"], r.cells["precision"]) for r in rows] == [
        ("1", "not recorded"),
        ("1", "fp32"),
        ("1", "bf16"),
    ]
    assert [r.runs[0].path for r in rows] == [old, source, bf16]  # in the order they came
    config["model"]["num_classes"] = 7  # an option set to another value: another recipe
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert len(report_rows(find_runs([source, old]))) == 2
