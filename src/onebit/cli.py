"""The ``onebit`` command line: one sub-command per job (see ``onebit --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import yaml

from onebit.errors import ConfigError, OneBitError


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
        options[key] = yaml.safe_load(value)
    return options


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name (see `onebit models`)")
    p.add_argument("--method", help="binarization method (fp, ste, xnor, bireal, irnet, ...)")
    p.add_argument("--bits", help="1w1a, 1w32a, 32w1a or 32w32a")
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.add_argument("--in-chans", type=int, help="input channels (1 for Fashion-MNIST)")
    p.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="other model option"
    )
    p.add_argument("--input", help="input size CxHxW (default: the model's own)")


def _model_from_args(args: argparse.Namespace):
    """Build the model the shared model arguments describe; return it and its input size."""
    from onebit.models import create_model, default_input_size

    options = parse_options(args.opt)
    for key in ("method", "bits", "num_classes", "in_chans"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    model = create_model(args.model, **options)
    chw = (
        parse_shape(args.input)
        if args.input
        else default_input_size(args.model, options.get("in_chans"))
    )
    return model, (1, *chw)


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


def cmd_summary(args: argparse.Namespace) -> int:
    from onebit.profile import summary

    model, input_size = _model_from_args(args)
    print(summary(model, input_size))
    return 0


def add_summary(sub) -> None:
    p = sub.add_parser(
        "summary", help="per-layer table: bits, shapes, BOPs/FLOPs, parameters, deployed memory"
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_summary)


def cmd_ops(args: argparse.Namespace) -> int:
    from onebit.profile import count_ops

    model, input_size = _model_from_args(args)
    print(count_ops(model, input_size))
    return 0


def add_ops(sub) -> None:
    p = sub.add_parser(
        "ops",
        help="BOPs, FLOPs and OPs = BOPs/64 + FLOPs per image, per conv/linear layer",
        description="Count binary and full-precision multiply-accumulates of one forward pass "
        "of one image, per conv/linear layer (the Bi-Real / ReActNet OPs convention).",
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_ops)


COMMANDS: list[Callable] = [add_models, add_summary, add_ops]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onebit",
        description="Binary neural networks: train, measure and deploy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OneBitError as err:
        print(f"onebit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onebit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
