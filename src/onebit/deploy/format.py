"""Which ``.onebit`` file this is. Format 2 (:mod:`onebit.deploy.graph`) is what export
writes and the C runtime runs. Format 1, written by onebit before the graph format, was a
safetensors container with a ``onebit`` JSON header that a PyTorch engine rebuilt the model
from; it is recognised only to say, in one line, how to export the model again.
"""

from __future__ import annotations

import json
from pathlib import Path

from onebit.deploy.graph import is_graph_file
from onebit.errors import ExportError


def is_deploy_file(path: str | Path) -> bool:
    """True if ``path`` is a graph file (format 2) or a format-1 ``.onebit`` file
    (unchecked): what ``onebit eval`` runs as a deployed model rather than a checkpoint."""
    try:
        check_format(path)
    except ExportError as err:
        return "format-1" in str(err)
    return True


def check_export_target(path: str | Path) -> None:
    """ExportError unless ``path`` may receive an export: a new file, or a ``.onebit`` file
    (either format) that it replaces. Anything else there (a checkpoint, a config, a damaged
    file) is kept: export never writes over what it cannot tell is its own."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory: give a file path, e.g. {path / 'model.onebit'}")
    if path.exists() and not (path.is_file() and is_deploy_file(path)):
        raise ExportError(
            f"{path} exists and is not a .onebit file: export does not write over it; give "
            "another path (or remove that file first)"
        )


# a format-1 file's safetensors header is read to recognise it; real ones are a few 100 kB
_MAX_SAFETENSORS_HEADER = 100 << 20


def check_format(path: str | Path) -> None:
    """Raise ExportError unless ``path`` is a graph file (format 2). A format-1 file (a
    safetensors container with a ``onebit`` header, written by onebit before the graph
    format) gets one line saying to export the model again."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if is_graph_file(head):
                return
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            text = f.read(size) if 2 <= size <= _MAX_SAFETENSORS_HEADER else b""
    except OSError as err:
        raise ExportError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        header = json.loads(text) if text[:1] == b"{" else None
    except (ValueError, RecursionError):
        header = None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    # a format-1 file signs its header; a training checkpoint has none of that signature
    if isinstance(metadata, dict) and "onebit_sha256" in metadata:
        raise ExportError(
            f"{path}: a format-1 .onebit file (safetensors, from an older onebit); this onebit "
            "runs graph files (format 2): export the model again with `onebit export RUN FILE`"
        )
    raise ExportError(
        f"{path}: not a .onebit file (it does not start as one: damaged, or another kind of "
        "file); export the model again with `onebit export RUN FILE`"
    )
