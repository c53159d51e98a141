"""The validation split held out of the training images (data.val_split), the normalisation
override (data.mean / data.std), and picking the best epoch on the held-out split
(eval.select_on: val): in the loaders, the trainer, its checkpoints and the report."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from onebit.config import load_config
from onebit.data import (
    DataConfig,
    build_loaders,
    data_config,
    dataset_input_spec,
    load_fashion_mnist,
    split_indices,
)
from onebit.errors import CheckpointError, ConfigError
from onebit.report import _train_images, find_runs, report_rows
from onebit.train import RunDir, Trainer
from onebit.train.checkpoint import read_checkpoint
from onebit.train.repeat import summarize, summary_line

CPU = torch.device("cpu")
FP = Path(__file__).resolve().parent.parent / "configs/fmnist/resnet20_fp.yaml"
N_TRAIN = 60_000  # Fashion-MNIST's training images


def _fmnist(**keys) -> DataConfig:
    return DataConfig(dataset="fashion_mnist", eval_subset=10, batch_size=32, **keys)


def _padded(images: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST as the loaders hold it: 28x28 zero-padded to 32x32."""
    return F.pad(images, (2, 2, 2, 2))


def test_held_out_split_is_disjoint_from_training_and_the_same_for_every_seed():
    raw, labels = load_fashion_mnist(None, "train")
    cfg = _fmnist(val_split=500, eval_batch_size=64)
    kept, held = split_indices(N_TRAIN, cfg)
    assert not set(held.tolist()) & set(kept.tolist())
    assert len(held) + len(kept) == N_TRAIN and held.tolist() != list(range(500))
    for seed in (0, 1):
        loaders = build_loaders(cfg, CPU, seed=seed)
        assert torch.equal(loaders.val.images, _padded(raw[held]))
        assert torch.equal(loaders.val.labels, labels[held])
        assert torch.equal(loaders.train.images, _padded(raw[kept]))
        # evaluated like the test set: in order, unaugmented, eval_batch_size per batch
        assert len(loaders.val) == 8
        x, y = next(loaders.val.batches(epoch=3))
        expected = (_padded(raw[held[:64]]).float() / 255 - 0.2860) / 0.3530
        assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, labels[held[:64]])
    other = split_indices(N_TRAIN, _fmnist(val_split=500, val_split_seed=1))[1]
    assert not torch.equal(other, held)
    assert build_loaders(_fmnist(subset=64), CPU).val is None


@pytest.mark.parametrize(("split", "count"), [(5000, 5000), (0.1, 6000), (1 / 7, 8571), (1e-6, 1)])
def test_val_split_is_a_count_or_a_fraction(split, count):
    kept, held = split_indices(N_TRAIN, _fmnist(val_split=split))
    assert len(held) == count and len(kept) == N_TRAIN - count
    # read from YAML: an integer is a count, a number a fraction
    assert data_config({"dataset": "fashion_mnist", "val_split": split}).val_split == split


def test_subset_takes_the_first_images_left_after_the_split():
    raw, _ = load_fashion_mnist(None, "train")
    cfg = _fmnist(val_split=0.1, subset=64)
    loaders = build_loaders(cfg, CPU)
    kept, _ = split_indices(N_TRAIN, cfg)
    assert loaders.train.num_samples == 64 and loaders.val.num_samples == 6000
    assert torch.equal(loaders.train.images, _padded(raw[kept[:64]]))
    assert kept[:64].tolist() != list(range(64))  # some of the first 64 images are held out


def test_mean_std_override_normalises_and_lands_in_the_input_spec(imagenet_root):
    raw, _ = load_fashion_mnist(None, "test")
    cfg = _fmnist(mean=[0.5], std=[0.25])
    x, _ = next(build_loaders(cfg, CPU, train=False).eval.batches(0))
    assert torch.allclose(x, (_padded(raw[:10]).float() / 255 - 0.5) / 0.25, atol=1e-5)
    spec = dataset_input_spec(cfg)
    assert (spec.mean, spec.std) == ((0.5,), (0.25,))
    # a deployed model normalises as trained
    assert torch.allclose(torch.from_numpy(spec.preprocess(raw[:10])), x, atol=1e-5)
    assert dataset_input_spec(_fmnist()).mean == (0.2860,)
    # image folders: the loaders and the spec too
    folder = {"dataset": "imagefolder", "root": str(imagenet_root), "image_size": 8, "workers": 0}
    own = DataConfig(**folder, mean=[0.5, 0.4, 0.3], std=[0.1, 0.2, 0.4])
    x_own, _ = next(build_loaders(own, CPU, train=False).eval.batches(0))
    x_net, _ = next(build_loaders(DataConfig(**folder), CPU, train=False).eval.batches(0))
    pixels = x_net * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor(
        [0.485, 0.456, 0.406]
    ).view(1, 3, 1, 1)
    mean, std = torch.tensor(own.mean).view(1, 3, 1, 1), torch.tensor(own.std).view(1, 3, 1, 1)
    assert torch.allclose(x_own, (pixels - mean) / std, atol=1e-5)
    assert dataset_input_spec(own).std == (0.1, 0.2, 0.4)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"val_split": 0}, r"data\.val_split: 0 is neither a number of images"),
        ({"val_split": 1.0}, r"data\.val_split: 1\.0 is neither"),
        ({"val_split": "half"}, r"config key data\.val_split: expected an integer or a number"),
        (
            {"dataset": "imagefolder", "val_split": 100},
            r"data\.val_split: data\.dataset 'imagefolder' has no option val_split",
        ),
        ({"mean": [0.5, 0.5]}, r"data\.mean: 2 values, but fashion_mnist has 1 channel"),
        ({"dataset": "cifar10", "std": [0.2]}, r"data\.std: 1 values, but cifar10 has 3"),
        ({"std": [0.0]}, r"data\.std: \[0\.0\] must be positive numbers"),
    ],
)
def test_bad_keys_are_one_line_config_errors(keys, message):
    with pytest.raises(ConfigError, match=message) as err:
        data_config({"dataset": "fashion_mnist", **keys})
    assert "\n" not in str(err.value)


def test_val_split_must_leave_training_images(cifar_roots):
    cfg = DataConfig(dataset="cifar10", root=str(cifar_roots["cifar10"]), checksum=False)
    for split in (30, 0.99):  # the tiny CIFAR-10 has 30 training images
        cfg.val_split = split
        with pytest.raises(ConfigError, match=r"data\.val_split: .* holds out 30 of the 30"):
            build_loaders(cfg, CPU)


def test_select_on_val_needs_a_val_split():
    with pytest.raises(ConfigError, match=r"eval\.select_on: val .* set data\.val_split") as err:
        load_config(FP, ["eval.select_on=val"])
    assert "\n" not in str(err.value)
    assert load_config(FP, ["eval.select_on=val", "data.val_split=100"]).eval.select_on == "val"


def test_select_on_val_records_heldout_and_picks_the_best_epoch_on_it(tmp_path, one_thread):
    overrides = [
        "data.subset=64",
        "data.batch_size=32",
        "data.eval_subset=64",
        "data.val_split=100",
        "runtime.device=cpu",
        "schedule.epochs=2",
    ]
    config = load_config(FP, [*overrides, "eval.select_on=val"])
    run = RunDir(tmp_path / "seed0")
    trainer = Trainer(config, run)
    evaluated = trainer.run_epoch
    # (test, held-out) top-1 per epoch: test prefers epoch 2, the held-out split epoch 1
    figures = [(50.0, 30.0), (90.0, 20.0)]

    def run_epoch(epoch):
        record = evaluated(epoch)
        assert 0 <= record["heldout_top1"] <= record["heldout_top5"] <= 100
        assert record["heldout_loss"] > 0 and trainer.loaders.val.num_samples == 100
        record["val_top1"], record["heldout_top1"] = figures[epoch]
        return record

    trainer.run_epoch = run_epoch
    result = trainer.fit()
    assert (result["best_epoch"], result["best_top1"], result["best_split"]) == (1, 30.0, "val")
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["heldout_top1"] for r in records] == [30.0, 20.0]
    assert json.loads(run.last_json.read_text())["best_split"] == "val"
    state = read_checkpoint(run.best)[1]
    assert (state["progress"]["best_epoch"], state["heldout_top1"], state["val_top1"]) == (
        1,
        30.0,
        50.0,
    )
    log = run.log_file.read_text()
    assert "heldout top1 30.00%" in log and "best epoch 1, picked on val: top1 30.00%" in log
    # the report picks the same epoch: its test top-1, and the held-out figure beside it
    row = report_rows(find_runs([run.path]))[0]
    assert row.cells["best epoch top-1 (%)"] == "50.00"
    assert row.cells["picked on (held-out top-1 %)"] == "val (30.00)"
    assert row.cells["train images"] == "64"  # data.subset, taken after the held-out split
    summary = summarize(tmp_path, [0])  # --runs: the test top-1 of the picked epochs
    assert summary["best_top1"]["values"] == [50.0] and summary["best_split"] == "val"
    assert "best epoch (picked on val) 50.00" in summary_line(summary, tmp_path)
    # the best epoch so far was picked on val: resuming cannot switch to test
    switched = load_config(FP, [*overrides, "eval.select_on=test", "schedule.epochs=3"])
    with pytest.raises(CheckpointError, match="best epoch is picked on val, the config says"):
        Trainer(switched, run).fit(resume=True)
    # nor train on other images: the split is part of what is trained
    other = load_config(FP, [*overrides, "eval.select_on=val", "data.val_split=200"])
    with pytest.raises(CheckpointError, match=r"differs at data\.val_split \(saved 100, now 200"):
        Trainer(other, run).fit(resume=True)


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        ([], "all"),
        (["data.val_split=5000"], "all − 5,000 held out"),
        (["data.val_split=0.1"], "all − 10% held out"),
        (["data.val_split=5000", "data.subset=640"], "640"),
    ],
)
def test_report_says_how_many_training_images_a_run_saw(overrides, shown):
    """The report's "train images": the held-out split is not trained on, so a run that holds
    5,000 out does not show "all"."""
    assert _train_images(load_config(FP, overrides).data) == shown


def test_plot_draws_the_held_out_curve(tmp_path):
    """A run that holds images out logs heldout_top1 each epoch: `onebit plot` draws it (its
    series) beside the test curve, and names it in the top-1 panel's title."""
    pytest.importorskip("matplotlib")
    from onebit.plot import curves, plot_runs

    config = "model: {name: resnet20}\n"
    run = tmp_path / "held"
    run.mkdir()
    (run / "config.yaml").write_text(config)
    records = [{"epoch": e, "val_top1": 80.0 + e, "heldout_top1": 79.0 + e} for e in (1, 2, 3, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (curve,) = curves([run])
    assert curve.series("heldout_top1")[:2] == ([1, 2, 3, 4], [80.0, 81.0, 82.0, 83.0])
    from matplotlib.axes import Axes

    drawn, titles = [], []
    plot, set_title = Axes.plot, Axes.set_title

    def record_plot(ax, *args, **kwargs):
        if len(args) == 2:
            drawn.append((list(args[1]), kwargs.get("ls")))
        return plot(ax, *args, **kwargs)

    def record_title(ax, label, *args, **kwargs):
        titles.append(label)
        return set_title(ax, label, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Axes, "plot", record_plot)
        patch.setattr(Axes, "set_title", record_title)
        out = plot_runs([run], tmp_path / "curves.png")
    assert out.stat().st_size > 0
    assert ([80.0, 81.0, 82.0, 83.0], "-.") in drawn and ([81.0, 82.0, 83.0, 84.0], "-") in drawn
    assert any("dash-dot: held out" in t for t in titles)
