"""The onebit C runtime from Python: run a ``.onebit`` graph file (format 2) with numpy only.

    with Runtime.load("model.onebit") as rt:
        logits = rt(x)  # x: float32 (N, C, H, W), already normalised; logits: (N, classes)

The shared library is the extension ``onebit.deploy._runtime`` that installing the package
builds from ``runtime/src`` (setup.py), or the file ``ONEBIT_RUNTIME_LIB`` names (for example
``runtime/build/libonebit.so`` from ``make -C runtime``). Errors of the runtime (a malformed
file, an unsupported kernel) raise :class:`ExportError` with its one-line message.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np

from onebit.deploy.graph import TRANSFORMS, InputRecord
from onebit.errors import ExportError

LIBRARY_ENV = "ONEBIT_RUNTIME_LIB"
_ERR_LEN = 512
_TRANSFORM_NAMES = {code: name for name, code in TRANSFORMS.items()}


class _CInputRecord(ctypes.Structure):
    """onebit.h: onebit_input_record."""

    _fields_ = [
        ("transform", ctypes.c_int),
        ("raw_h", ctypes.c_int),
        ("raw_w", ctypes.c_int),
        ("mean", ctypes.c_float * 4),
        ("std", ctypes.c_float * 4),
    ]


def library_path() -> Path:
    """The runtime's shared library: ``$ONEBIT_RUNTIME_LIB``, else the built extension."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    built = sorted(Path(__file__).parent.glob("_runtime*.so"))
    if not built:
        raise ExportError(
            "the onebit C runtime is not built: install onebit with a C compiler present, or "
            f"run make -C runtime and set {LIBRARY_ENV}=runtime/build/libonebit.so"
        )
    return built[0]


@functools.cache
def _library(path: str) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise ExportError(f"cannot load the onebit C runtime {path}: {err}") from None
    p, c_int, c_size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    int_p, float_p = ctypes.POINTER(c_int), ctypes.POINTER(ctypes.c_float)
    signatures = {
        "onebit_load_buffer": (c_int, [p, c_size, ctypes.POINTER(p), ctypes.c_char_p, c_size]),
        "onebit_input_shape": (None, [p, int_p, int_p, int_p]),
        "onebit_get_input_record": (None, [p, ctypes.POINTER(_CInputRecord)]),
        "onebit_num_outputs": (c_int, [p]),
        "onebit_run": (c_int, [p, float_p, c_int, float_p, ctypes.c_char_p, c_size]),
        "onebit_set_threads": (c_int, [p, c_int]),
        "onebit_set_kernel": (c_int, [p, ctypes.c_char_p]),
        "onebit_kernel": (ctypes.c_char_p, [p]),
        "onebit_free": (None, [p]),
        "onebit_version": (ctypes.c_char_p, []),
        "onebit_status_name": (ctypes.c_char_p, [c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class Runtime:
    """A loaded graph: call it on a float32 NCHW batch to get the logits. Not thread-safe (a
    run writes the model's arena); use one Runtime per thread."""

    def __init__(self, handle: ctypes.c_void_p, lib: ctypes.CDLL, where: str) -> None:
        self._handle, self._lib, self._where = handle, lib, where
        c, h, w = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.onebit_input_shape(handle, ctypes.byref(c), ctypes.byref(h), ctypes.byref(w))
        self.input_shape: tuple[int, int, int] = (c.value, h.value, w.value)
        self.num_outputs: int = lib.onebit_num_outputs(handle)

    @classmethod
    def load(cls, path: str | Path) -> Runtime:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ExportError(f"{path}: {err.strerror or err}") from None
        return cls.from_bytes(data, where=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "graph") -> Runtime:
        """A runtime from the file's bytes (copied by the runtime; ``data`` may go)."""
        lib = _library(str(library_path()))
        handle, err = ctypes.c_void_p(), ctypes.create_string_buffer(_ERR_LEN)
        status = lib.onebit_load_buffer(data, len(data), ctypes.byref(handle), err, _ERR_LEN)
        if status != 0:
            raise ExportError(f"{where}: {err.value.decode(errors='replace')}")
        return cls(handle, lib, where)

    @property
    def input_record(self) -> InputRecord:
        """The input and how raw images become it (transform, raw size, mean, std)."""
        rec = _CInputRecord()
        self._lib.onebit_get_input_record(self._checked(), ctypes.byref(rec))
        c, h, w = self.input_shape
        k = min(c, 4)
        return InputRecord(
            channels=c,
            height=h,
            width=w,
            num_classes=self.num_outputs,
            transform=_TRANSFORM_NAMES[rec.transform],
            raw_height=rec.raw_h,
            raw_width=rec.raw_w,
            mean=tuple(rec.mean[:k]),
            std=tuple(rec.std[:k]),
        )

    @property
    def kernel(self) -> str:
        """The binary conv kernel in use ("avx2", "portable", ...)."""
        return self._lib.onebit_kernel(self._checked()).decode()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, num_outputs) float32 of the batch ``x`` (N, C, H, W)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_shape or x.shape[0] < 1:
            c, h, w = self.input_shape
            raise ValueError(f"the graph takes (N, {c}, {h}, {w}) float32, got {x.shape}")
        out = np.empty((x.shape[0], self.num_outputs), dtype=np.float32)
        err = ctypes.create_string_buffer(_ERR_LEN)
        float_p = ctypes.POINTER(ctypes.c_float)
        status = self._lib.onebit_run(
            self._checked(),
            x.ctypes.data_as(float_p),
            x.shape[0],
            out.ctypes.data_as(float_p),
            err,
            _ERR_LEN,
        )
        if status != 0:
            raise ExportError(f"{self._where}: {err.value.decode(errors='replace')}")
        return out

    def set_threads(self, threads: int) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 < threads <= 4096:
            raise ExportError(f"threads {threads!r}: a whole number from 1 (to 4096)")
        status = self._lib.onebit_set_threads(self._checked(), threads)
        if status != 0:
            raise ExportError(f"threads {threads}: this build of the runtime has no OpenMP")

    def set_kernel(self, name: str) -> None:
        """ "auto", "portable", "avx2", "avx512" or "neon"."""
        status = self._lib.onebit_set_kernel(self._checked(), name.encode())
        if status != 0:
            raise ExportError(
                f"kernel {name!r}: {self._status(status)}: not one this build and CPU run "
                "(auto, portable, avx2, avx512, neon)"
            )

    def close(self) -> None:
        if self._handle:
            self._lib.onebit_free(self._handle)
            self._handle = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _checked(self) -> ctypes.c_void_p:
        if not self._handle:
            raise ExportError(f"{self._where}: the runtime is closed")
        return self._handle

    def _status(self, status: int) -> str:
        return self._lib.onebit_status_name(status).decode()


def version() -> str:
    """The C runtime's version."""
    return _library(str(library_path())).onebit_version().decode()
