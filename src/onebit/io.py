"""The one way onebit writes a file: whole or not at all, with the mode the umask allows.

Every file onebit writes (checkpoints, config.yaml, metrics.jsonl rewrites, summary.json,
reports, plots, ``.onebit`` exports) goes through :func:`atomic_write`: the folder is
created, the content goes to a temporary file beside the target, is flushed to disk
(fsync), given the permissions a plain ``open()`` would give (0666 minus the umask; the
temporary file itself is created 0600), and renamed over the target. A crash leaves the old
file or the new one, never half of one; the temporary files a kill leaves behind are named
``.<name>.<random>.tmp`` and :func:`remove_stale_temporaries` clears them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from onebit.errors import OutputError


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _cannot_write(path: Path, folder: Path, err: OSError) -> OutputError:
    """The error for ``path`` that could not be written: where ``folder`` (the one it goes
    in) or a folder above it is a file, that is the reason."""
    for above in (folder, *folder.parents):
        if above.exists() and not above.is_dir():
            return OutputError(f"cannot write {path}: {above} is a file, not a folder")
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def atomic_write(path: str | Path, content: bytes | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, or a function that writes the file at the path it is given)
    to ``path`` atomically; OutputError naming the path if it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _cannot_write(path, path.parent, err) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
        if not isinstance(content, bytes):
            content(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves when killed mid-write
    (``.<name>.<random>.tmp``) in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


LOCK_NAME = ".lock"
_HELD: set[str] = set()  # the folders this process holds


@contextlib.contextmanager
def folder_lock(folder: str | Path, busy: str) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs: an exclusive advisory lock
    (flock) on its ``.lock`` file, which holds the holder's process id. The OS releases the
    lock when the process ends, however it ends, so a killed process leaves no stale lock.
    Where another process holds it: OutputError ``busy``, formatted with ``pid`` (that
    process's id, or "unknown"). Re-entrant: a block inside another that holds the same
    folder holds it too (a command can take the lock before its slow set-up, the trainer
    again around its work). Where the platform or filesystem has no advisory locks, the
    block runs unlocked. The file stays, except where this call created the folder and the
    block left nothing else in it (a command that failed before writing anything leaves no
    folder): removing a lock file other processes may have seen would let two processes
    lock two different files of one name."""
    key = os.path.realpath(folder)
    if key in _HELD:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    folder = Path(folder)
    lock = folder / LOCK_NAME
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as err:
        raise _cannot_write(lock, folder, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise OutputError(busy.format(pid=holder if holder.isdigit() else "unknown")) from None
        except OSError:  # a filesystem without flock (some network mounts): no lock
            pass
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            if created:
                with contextlib.suppress(OSError):
                    if os.listdir(folder) == [LOCK_NAME]:
                        lock.unlink()
                        folder.rmdir()
    finally:
        os.close(fd)
