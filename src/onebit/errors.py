"""User-facing errors: each message names the input that is wrong and how to fix it.

The CLI prints the message of a ``OneBitError`` alone (no traceback) and exits with status 2.
Anything else that escapes is a bug in onebit and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(
    name: object,
    choices: Iterable[str],
    *,
    lead: str = " Did you mean ",
    prefix: str = "",
    n: int = 1,
    quote: bool = False,
) -> str:
    """The hint of a message about an unknown ``name``: ``lead``, the (at most ``n``) choices
    closest to it, each after ``prefix`` (quoted with ``quote``), and "?"; "" when none is
    close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n)
    names = [f"{prefix}{c!r}" if quote else f"{prefix}{c}" for c in close]
    return f"{lead}{', '.join(names)}?" if names else ""


class OneBitError(Exception):
    """Base class of every error caused by user input (a name, a file, a config value)."""


class UnknownNameError(OneBitError, KeyError):
    """A name (model, quantizer, method, ...) that is not in its registry."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        choices = sorted(choices)
        hint = did_you_mean(name, choices, n=3, quote=True)
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(OneBitError, ValueError):
    """A config file, override or keyword argument with a wrong key, type or value."""


class ImportNotAllowedError(OneBitError):
    """A file (a run's config, a checkpoint, a ``.onebit`` header) names a module to import
    that the user did not allow (:mod:`onebit.user_code`)."""


class DataError(OneBitError):
    """A dataset that is missing, incomplete or corrupt."""


class CheckpointError(OneBitError):
    """A checkpoint or run directory that is missing, corrupt or does not match the model."""


class ExportError(OneBitError):
    """A deployment file that is malformed, truncated or of an unsupported version."""


class TrainingError(OneBitError):
    """Training that cannot go on (for example a NaN or infinite loss)."""


class OutputError(OneBitError):
    """A file or folder onebit cannot write (a path through a file, no permission, no space)."""
