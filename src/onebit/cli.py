"""The ``onebit`` command line: one sub-command per job (see ``onebit --help``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from onebit.config import parse_yaml
from onebit.errors import ConfigError, OneBitError
from onebit.user_code import import_modules


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> (3, 32, 32)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"--input {text!r} is not a shape like 3x32x32 (channels x H x W)")
    return shape


def parse_options(pairs: Sequence[str]) -> dict[str, object]:
    """``["structure=bireal", "num_classes=100"]`` -> dict, values read as YAML scalars."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r} is not KEY=VALUE")
        options[key] = parse_yaml(value, f"--opt {pair[:80]!r}: the value")
    return options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="binarization method (fp, ste, xnor, bireal, irnet, ...)")
    p.add_argument("--bits", help="1w1a, 1w32a, 32w1a or 32w32a")
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.add_argument("--in-chans", type=int, help="input channels (1 for Fashion-MNIST)")
    p.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="other model option"
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name (see `onebit models`)")
    _add_model_options(p)
    p.add_argument("--input", help="input size CxHxW (default: the model's own)")


def _model_options(args: argparse.Namespace) -> dict[str, object]:
    options = parse_options(args.opt)
    for key in ("method", "bits", "num_classes", "in_chans"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def _model_from_args(args: argparse.Namespace):
    """Build the model the shared model arguments describe; return it and its input size:
    ``--input``, which must have the channels (and, for a model with option ``input_hw``,
    the side) the model is built for, else the size it is built for."""
    from onebit.models import create_model, default_input_size

    model = create_model(args.model, **_model_options(args))
    built = model.onebit_spec["options"]
    chans, h, w = default_input_size(args.model, built.get("in_chans"))
    side = built.get("input_hw")
    if not args.input:
        return model, (1, chans, side or h, side or w)
    c, h, w = parse_shape(args.input)
    if c != chans:
        raise ConfigError(
            f"--input {args.input} has {c} channels but {args.model} takes {chans} "
            f"(--in-chans {chans}): give --input {chans}x{h}x{w}, or --in-chans {c}"
        )
    if side is not None and (h, w) != (side, side):
        raise ConfigError(
            f"--input {args.input} is {h}x{w} but {args.model} is built for {side}x{side} "
            f"(option input_hw {side}): give --input {c}x{side}x{side}, or --opt input_hw={h}"
        )
    return model, (1, c, h, w)


def cmd_models(args: argparse.Namespace) -> int:
    from onebit.models import list_models, model_entry

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; `onebit models` lists them all")
    width = max(len(n) for n in names)
    for name in names:
        entry = model_entry(name)
        method = entry.defaults.get("method", "")
        print(f"{name.ljust(width)}  {str(method).ljust(11)}  {entry.doc}")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*bireal*'")
    p.set_defaults(func=cmd_models)


def _run_on_input(table, args: argparse.Namespace) -> int:
    """Print ``table(model, input_size)`` (one forward pass of the model the arguments
    describe); a pass the input does not allow (memory, a size the layers cannot take) is a
    ConfigError of one line."""
    model, input_size = _model_from_args(args)
    try:
        text = table(model, input_size)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        shape = "x".join(map(str, input_size[1:]))
        raise ConfigError(
            f"{args.model} cannot run on a {shape} input ({reason}); give another --input"
        ) from None
    print(text)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from onebit.profile import summary

    return _run_on_input(summary, args)


def add_summary(sub) -> None:
    p = sub.add_parser(
        "summary", help="per-layer table: bits, shapes, BOPs/FLOPs, parameters, deployed memory"
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_summary)


def cmd_ops(args: argparse.Namespace) -> int:
    from onebit.profile import count_ops

    return _run_on_input(count_ops, args)


def add_ops(sub) -> None:
    p = sub.add_parser(
        "ops",
        help="BOPs, FLOPs and OPs = BOPs/64 + FLOPs per image, per conv/linear layer",
        description="Count binary and full-precision multiply-accumulates of one forward pass "
        "of one image, per conv/linear layer (the Bi-Real / ReActNet OPs convention).",
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_ops)


def default_run_dir(config_path: str) -> str:
    """``runs/<config folder>/<config name>``, e.g. runs/fmnist/resnet20_recu."""
    path = Path(config_path)
    return str(Path("runs") / path.parent.name / path.stem)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from onebit.config import load_config
    from onebit.train import RunDir, Trainer
    from onebit.train.distributed import process_group
    from onebit.train.repeat import parse_seeds, summary_line, train_seeds

    config = load_config(args.config, args.set)
    out = args.out or config.runtime.out
    config.runtime.out = default_run_dir(args.config) if out == "runs/auto" else out
    seeds = parse_seeds(args.runs, args.seeds)
    run = RunDir(config.runtime.out)
    # one process per torchrun rank; process 0 holds the run directory before the model and
    # data are built, so a second training process into it fails at once
    with (
        process_group(config.runtime.device) as rank,
        run.hold() if rank == 0 else contextlib.nullcontext(),
    ):
        if seeds is not None:
            summary = train_seeds(config, config.runtime.out, seeds, resume=args.resume)
        else:
            result = Trainer(config, run).fit(resume=args.resume)
    if rank != 0:
        return 0
    if seeds is not None:
        print(summary_line(summary, Path(config.runtime.out) / "summary.json"))
        return 0
    if "val_top1" in result:
        print(
            f"test top-1 {result['val_top1']:.2f}% (best {result['best_split']} top-1 "
            f"{result['best_top1']:.2f}% at epoch {result['best_epoch']}); run directory: "
            f"{run.path}"
        )
    else:
        print(f"{run.path} had already finished; `onebit eval {run.path}` evaluates it")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe from a YAML config (see docs/training.md)",
        description="Train a recipe from a YAML config. Multi-GPU: torchrun --nproc_per_node N "
        "-m onebit train CONFIG (data.batch_size is the batch of all processes together).",
    )
    p.add_argument("config", help="a YAML recipe, e.g. configs/fmnist/resnet20_recu.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.05 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runtime.out, or runs/<folder>/<name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the directory where it stopped"
    )
    repeat = p.add_mutually_exclusive_group()
    repeat.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="train N times with seeds 0..N-1 into OUT/seed<k>/; OUT/summary.json gets the "
        "mean ± std of the final and best top-1",
    )
    repeat.add_argument(
        "--seeds", metavar="LIST", help="as --runs, with these seeds, e.g. --seeds 0,1,2"
    )
    p.set_defaults(func=cmd_train)


def _run_config(config, overrides: Sequence[str]):
    """A run's config with ``--set`` overrides applied and checked again."""
    from onebit.config import apply_overrides, config_from_dict

    data = config.to_dict()
    apply_overrides(data, overrides)
    return config_from_dict(data)


def _recalibrated(model, config, steps: int, device, amp=None):
    """Evaluate ``model`` with its stored BatchNorm statistics, re-estimate them from ``steps``
    training batches of ``config``'s data (:func:`onebit.train.bn.recalibrate_bn`), evaluate
    again. Returns (loaders, metrics before, metrics after)."""
    from onebit.data import build_loaders
    from onebit.train import evaluate
    from onebit.train.bn import recalibrate_bn

    loaders = build_loaders(config.data, device, config.runtime.seed)
    before = evaluate(model, loaders.eval, amp)
    batches = loaders.train.batches(0, augment=config.eval.bn_augment)
    used = recalibrate_bn(model, batches, steps, amp)
    after = evaluate(model.eval(), loaders.eval, amp)
    after["batches"] = used
    return loaders, before, after


def _eval_deployed(args: argparse.Namespace) -> int:
    """``onebit eval FILE.onebit``: the C runtime's top-1 / top-5 on the dataset its
    header names, beside the trained model's figures stored at export."""
    import torch

    from onebit.config import apply_overrides
    from onebit.data import build_loaders, data_config
    from onebit.deploy import load
    from onebit.train import evaluate

    runtime = load(args.run)
    spec = runtime.input_spec
    if spec is None or spec.dataset is None:
        raise ConfigError(
            f"{args.run} does not name the dataset it was trained on (exported by an older "
            "onebit, or from a bare state dict); evaluate its run directory instead"
        )
    values = {"data": {"dataset": spec.dataset}}
    if spec.dataset == "imagefolder":
        values["data"]["image_size"] = spec.size
    for item in args.set:
        if not item.startswith("data."):
            raise ConfigError(f"--set {item!r}: a .onebit file takes only data.* keys")
    apply_overrides(values, args.set)
    loaders = build_loaders(data_config(values["data"]), torch.device("cpu"), train=False)
    result = evaluate(runtime, loaders.eval)
    accuracy = runtime.meta.get("accuracy") or {}
    stored = ""
    if "val_top1" in accuracy:
        stored = f"; the trained model at export: {accuracy['val_top1']:.2f}%"
        stored += f" on {accuracy['images']:.0f} images" if "images" in accuracy else ""
    print(
        f"val_loss {result['val_loss']:.4f}  val_top1 {result['val_top1']:.2f}%  "
        f"val_top5 {result['val_top5']:.2f}%  ({loaders.eval.num_samples} images, {args.run}, "
        f"C runtime, kernel {runtime.kernel}{stored})"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from onebit.data import build_loaders
    from onebit.deploy.format import is_deploy_file
    from onebit.train import evaluate, load_model, resolve_device
    from onebit.train.checkpoint import checkpoint_path

    # by its name too: a .onebit file damaged at the start is then reported as one
    if Path(args.run).is_file() and (is_deploy_file(args.run) or args.run.endswith(".onebit")):
        if args.bn_recalibrate:
            raise ConfigError("--bn-recalibrate: a .onebit file has its statistics folded in")
        return _eval_deployed(args)
    model, config = load_model(args.run)
    config = _run_config(config, args.set)
    device = resolve_device(config.runtime.device)
    model = model.to(device)
    amp = torch.bfloat16 if device.type == "cuda" and config.runtime.precision == "bf16" else None
    stored = ""
    if args.bn_recalibrate:
        loaders, before, result = _recalibrated(model, config, args.bn_recalibrate, device, amp)
        stored = (
            f"  (BatchNorm statistics re-estimated from {result['batches']} training batches; "
            f"stored: val_top1 {before['val_top1']:.2f}%)"
        )
    else:
        loaders = build_loaders(config.data, device, config.runtime.seed, train=False)
        result = evaluate(model, loaders.eval, amp)
    print(
        f"val_loss {result['val_loss']:.4f}  val_top1 {result['val_top1']:.2f}%  "
        f"val_top5 {result['val_top5']:.2f}%  ({loaders.eval.num_samples} images, "
        f"{checkpoint_path(args.run)}){stored}"
    )
    return 0


def _add_run_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run's config, e.g. --set data.root=/data/cifar10",
    )


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run or a deployed .onebit file (top-1 / top-5 on the test split)",
    )
    p.add_argument(
        "run",
        help="a run directory (its best.safetensors), a .safetensors checkpoint, or a .onebit "
        "file (run by the C runtime on the dataset it names)",
    )
    _add_run_overrides(p)
    p.add_argument(
        "--bn-recalibrate",
        type=_positive(int, zero=True),
        default=0,
        metavar="N",
        help="first re-estimate the BatchNorm statistics from N training batches "
        "(reports both figures)",
    )
    p.set_defaults(func=cmd_eval)


def _trained_model(source: str):
    """The model a run directory or checkpoint of ``onebit train`` holds."""
    from onebit.train.checkpoint import load_model

    model, _config = load_model(source)
    return model


def _model_with_state(args: argparse.Namespace):
    """``--model NAME [options]`` built, with the state dict of the .safetensors SOURCE."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from onebit.errors import CheckpointError
    from onebit.models import create_model

    model = create_model(args.model, **_model_options(args))
    try:
        state = load_file(args.source)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{args.source}: not a readable .safetensors state dict ({str(err)[:120]})"
        ) from None
    if state and all(k.startswith(("model.", "optim.")) for k in state):
        # a checkpoint of `onebit train` (best/last.safetensors): its model.* tensors
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        # torch's message: a title line, then one line per problem; keep the first problem
        detail = (str(err).splitlines()[1:] or [""])[0].strip()[:160]
        raise CheckpointError(
            f"{args.source}: does not match model {args.model!r} with these options ({detail})"
        ) from None
    return model


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from onebit.data import dataset_input_spec
    from onebit.deploy import export, load
    from onebit.deploy.format import check_export_target
    from onebit.train import evaluate
    from onebit.train.bn import RECALIBRATE_BATCHES
    from onebit.train.checkpoint import load_model

    check_export_target(args.out)  # before the model is read and its statistics re-estimated
    config, checked, spec, accuracy = None, "", None, None
    if args.model:
        model = _model_with_state(args)
    else:
        model, config = load_model(args.source)
        config = _run_config(config, args.set)
        if config.data.dataset != "imagefolder":  # an image folder's class names need its files
            spec = dataset_input_spec(config.data)
    steps = args.bn_recalibrate
    if steps is None:
        steps = (config.eval.bn_recalibrate if config else 0) or RECALIBRATE_BATCHES
    if config is not None and not args.no_recalibrate and steps:
        try:
            loaders, before, after = _recalibrated(model, config, steps, torch.device("cpu"))
        except OneBitError as err:
            loaders = None
            checked = (
                f"\nBatchNorm statistics kept as stored: the run's data cannot be read ({err}). "
                "Give it with --set data.root=DIR, or pass --no-recalibrate"
            )
    else:
        loaders = None
    if loaders is not None:
        spec = dataset_input_spec(config.data, loaders.class_names)
        accuracy = {
            "val_top1": after["val_top1"],
            "val_top5": after["val_top5"],
            "images": loaders.eval.num_samples,
        }
    imports = config.imports if config is not None else None
    meta = export(
        model, args.out, fp16=args.fp16, input_spec=spec, accuracy=accuracy, imports=imports
    )
    print(
        f"wrote {args.out}: {len(meta['nodes'])} ops, {len(meta['packed'])} packed binary "
        f"layers, {len(meta['float_binary'])} other binary-weight layers, "
        f"{len(meta['folded'])} BatchNorms folded, full precision as fp32" + checked
    )
    if loaders is not None:
        deployed = evaluate(load(args.out), loaders.eval)
        print(
            f"BatchNorm statistics re-estimated from {after['batches']} training batches: "
            f"test top-1 {before['val_top1']:.2f}% stored -> {after['val_top1']:.2f}% "
            f"recalibrated, {deployed['val_top1']:.2f}% through the C runtime "
            f"({loaders.eval.num_samples} images; --no-recalibrate keeps the stored ones)"
        )
    return 0


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as a bit-packed .onebit file",
        description="Write a trained model as a bit-packed .onebit file (run it with "
        "onebit.deploy.load). SOURCE is a run directory or checkpoint of `onebit train`, or, "
        "with --model, a .safetensors state dict of that registry model. The BatchNorm "
        "statistics of a run are first re-estimated from its training data (the test top-1 "
        "before, after and through the C runtime is printed).",
    )
    p.add_argument("source", help="run directory / checkpoint, or a state dict with --model")
    p.add_argument("out", help="output file, e.g. model.onebit")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="store the full-precision parts in fp16 (refused: the graph file is fp32)",
    )
    p.add_argument("--model", help="registry model name the state dict SOURCE belongs to")
    p.add_argument(
        "--no-recalibrate",
        action="store_true",
        help="keep the stored BatchNorm statistics (do not read the training data)",
    )
    p.add_argument(
        "--bn-recalibrate",
        type=_positive(int, zero=True),
        metavar="N",
        help="training batches to re-estimate them from (default: the run's "
        "eval.bn_recalibrate, else 50)",
    )
    _add_run_overrides(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_export)


def _positive(
    kind: Callable[[str], int | float], zero: bool = False
) -> Callable[[str], int | float]:
    """An argparse type: ``kind(text)``, which must be > 0 (>= 0 with ``zero``), at most 1e6."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (value >= 0 if zero else value > 0) or value > 1e6:
            what = "non-negative" if zero else "positive"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} number up to 1e6")
        return value

    return parse


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of positive numbers"
            ) from None

    return parse


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from onebit.deploy import bench
    from onebit.deploy.engine import select_kernel
    from onebit.models import model_entry

    models = bench.DEFAULT_MODELS if args.models is None else args.models
    for name in models:  # a wrong name or kernel now, not after minutes of the layer table
        model_entry(name)
    select_kernel(args.kernel)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}; best of repeated calls over {args.min_time} s, ms")
    if not args.no_layers:
        print("\nResNet-18 binary 3x3 convs: PyTorch fp32 vs the runtime (binarize + pack + conv)")
        rows = bench.conv_rows(batches=args.batch, min_time=args.min_time, kernel=args.kernel)
        print(bench.format_conv_rows(rows))
    if models:
        print("\nWhole models (default input size): fp32 twin vs 1w1a in PyTorch vs deployed")
        rows = bench.model_rows(models, args.batch, args.min_time, kernel=args.kernel)
        print(bench.format_model_rows(rows))
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and size of the deployed engine against PyTorch fp32")
    p.add_argument(
        "--models",
        type=_csv(str),
        help="comma-separated registry models (default: the CIFAR-scale families; '' for none)",
    )
    p.add_argument(
        "--batch", type=_csv(_positive(int)), default=[1, 8], help="batch sizes (default: 1,8)"
    )
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer conv table")
    p.add_argument(
        "--threads", type=_positive(int), help="threads (default: torch.get_num_threads())"
    )
    p.add_argument(
        "--kernel", help="avx512, avx2, neon or portable (default: the best this CPU runs)"
    )
    p.add_argument(
        "--min-time",
        type=_positive(float, zero=True),
        default=0.5,
        help="seconds of repeats per measurement",
    )
    p.set_defaults(func=cmd_bench)


def cmd_report(args: argparse.Namespace) -> int:
    from onebit.report import report
    from onebit.train.checkpoint import atomic_write_text

    text = report(args.runs)
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown table of trained runs: top-1 (mean ± std over seeds), size, OPs, speed",
        description="Write a Markdown table of the runs in RUN_DIR... (run directories of "
        "`onebit train`, or folders searched for them, e.g. <out>/seed*/): one row per recipe, "
        "runs that differ only in runtime (seed, ...) grouped, with mean ± std of top-1.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory or folder of runs")
    p.add_argument("-o", "--out", help="write the Markdown here (default: print it)")
    p.set_defaults(func=cmd_report)


def cmd_plot(args: argparse.Namespace) -> int:
    from onebit.plot import plot_runs

    print(f"wrote {plot_runs(args.runs, args.out, args.label or None)}")
    return 0


def add_plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="training curves of runs as a PNG: loss, top-1, lr and schedules against epoch",
        description="Plot loss and top-1 (train and test) and the schedules (lr, ReCU tau, "
        "IR-Net EDE t) of the runs in RUN_DIR... against epoch, overlaid by name; the seeds of "
        "one recipe as mean and min-max band. Needs matplotlib: "
        'pip install -e ".[plot]" in a clone.',
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directory or folder of runs")
    p.add_argument("-o", "--out", required=True, help="the PNG file to write")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        help="legend name of each RUN_DIR, in order (default: the directory names)",
    )
    p.set_defaults(func=cmd_plot)


COMMANDS: list[Callable] = [
    add_models,
    add_summary,
    add_ops,
    add_train,
    add_eval,
    add_export,
    add_bench,
    add_report,
    add_plot,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onebit",
        description="Binary neural networks: train, measure and deploy.",
    )
    from onebit import __version__

    parser.add_argument("--version", action="version", version=f"onebit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import your Python module first (it registers binarizers, methods, "
            "techniques or models; searched in the current directory, then on sys.path); "
            "a run directory that names it may then use it (repeatable)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `onebit`: what it can do, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters stay as they are
            try:
                import_modules(
                    args.imports, source="--import", search=Path.cwd(), allowed=args.imports
                )
                return args.func(args)
            finally:  # onebit's warnings as one line each, not Python's file:line format
                for w in caught:
                    print(f"onebit: warning: {str(w.message)[:500]}", file=sys.stderr)
    except OneBitError as err:
        print(f"onebit: error: {str(err)[:2000]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onebit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onebit models | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
