"""The user's own modules: which ones onebit imports, and from where.

A module that registers the user's binarizers, methods, techniques or models is named, never
carried: a recipe's ``imports:``, a run's saved config, a ``.onebit`` header hold module names.
Importing a module runs its code, so onebit imports a name only when the user chose it:

- a recipe the user runs (``onebit train recipe.yaml``, ``load_config(path)``): its own
  ``imports:``, searched first in the recipe's folder;
- ``--import NAME`` on the command line (searched first in the current directory), or
  ``imports=[...]`` of a Python loader (searched on ``sys.path``);
- anything else (a run directory, a checkpoint, a ``.onebit`` file) may only name modules
  already imported: importing those again runs no code. Any other name is refused with one
  line that says how to allow it.

The current directory is never searched for a file's names, and ``sys.path`` keeps no folder
onebit searched: a module lying next to a downloaded model file does not run.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Collection
from pathlib import Path

from onebit.errors import ConfigError, ImportNotAllowedError

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_modules(
    names: object,
    *,
    source: str,
    search: Path | None = None,
    allowed: Collection[str] = (),
) -> None:
    """Import the modules ``names`` (a list of module names, or None) that ``source`` asks for.

    ``source``: what names them, for the messages (a file's path, ``--import``).
    ``allowed``: the names the user chose (the recipe they run names them, or they typed
    them); each is imported, with ``search`` first on ``sys.path`` while it is. A name not
    allowed must already be imported, else :class:`ImportNotAllowedError` names the modules,
    ``source`` and how to allow them; nothing is imported then. A malformed list or a module
    that cannot be imported is a ConfigError naming ``source``.
    """
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: imports: expected a list of module names, got {names!r:.80}")
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"{source}: imports: {name!r:.80} is not a module name (a.b.c)")
    refused = [n for n in names if n not in allowed and n not in sys.modules]
    if refused:
        them = "it" if len(refused) == 1 else "them"
        flags = " ".join(f"--import {n}" for n in refused)
        raise ImportNotAllowedError(
            f"{source} asks to import {', '.join(refused)}: a model or run file runs no code "
            f"unless you allow it; pass {flags} if you trust {them} (in Python: import {them} "
            "first)"
        )
    for name in names:
        _import(name, source, search)


def _where_it_failed(err: Exception) -> str:
    """``Kind: message (file, line N)`` of an exception raised while a module ran."""
    import traceback

    message = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
    if isinstance(err, SyntaxError):
        message, file, line = err.msg, err.filename, err.lineno
    else:  # the deepest frame of the user's code (not onebit's, nor the import machinery's)
        frames = traceback.extract_tb(err.__traceback__)
        package = str(Path(__file__).resolve().parent)
        own = [f for f in frames if not f.filename.startswith((package, "<"))] or frames
        file, line = (own[-1].filename, own[-1].lineno) if own else (None, None)
    at = f" ({file}, line {line})" if file else ""
    return f"{type(err).__name__}{': ' + message if message else ''}{at}"


def _import(name: str, source: str, search: Path | None) -> None:
    if name in sys.modules:
        return
    folder = str(search.resolve()) if search is not None else None
    added = folder is not None and folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()  # a module written since the interpreter started
    try:
        importlib.import_module(name)
    except ImportError as err:
        where = f"in {search}/ or " if search is not None else ""
        raise ConfigError(
            f"{source}: cannot import {name!r} ({err}); put the module {where}on PYTHONPATH"
        ) from None
    except Exception as err:  # the module's own code failed: where, in one line
        raise ConfigError(
            f"{source}: importing {name!r} failed: {_where_it_failed(err)}; fix the module"
        ) from None
    finally:
        if added:
            sys.path.remove(folder)
