"""Builds the C runtime of onebit.deploy (runtime/, also built alone by `make -C runtime`) and
the fused binarizer kernels of onebit.quant (no torch needed at build time).

Everything else about the package is in pyproject.toml. Both are optional: without a C
compiler the install still succeeds; training falls back to its pure-PyTorch paths, and
onebit.deploy.load says how to build the runtime.
"""

from glob import glob

from setuptools import Extension, setup

# The C runtime as a plain shared library (no PyInit: onebit.deploy.runtime loads it with
# ctypes); the CLI's main is left out.
RUNTIME_SOURCES = sorted(set(glob("runtime/src/*.c")) - {"runtime/src/cli.c"})
# why: runtime/Makefile; -fno-wrapv undoes Python's -fwrapv, with which GCC did not vectorise
# the runtime's index arithmetic (Bi-Real-18 ran 1.6x slower than the make build)
RUNTIME_FLAGS = ["-ffp-contract=off", "-fno-trapping-math", "-fno-wrapv"]

setup(
    ext_modules=[
        Extension(
            "onebit.deploy._runtime",
            sources=RUNTIME_SOURCES,
            include_dirs=["runtime/include"],
            extra_compile_args=["-O3", "-std=c11", "-fopenmp", *RUNTIME_FLAGS],
            extra_link_args=["-fopenmp"],
            optional=True,
        ),
        Extension(
            "onebit.quant._fused",
            sources=["src/onebit/quant/kernels/binarize.c"],
            extra_compile_args=["-O3", "-std=c11", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        ),
    ]
)
