"""Builds the C kernels of onebit.deploy and onebit.quant, and the C runtime (no torch needed
at build time).

Everything else about the package is in pyproject.toml. The extension is optional: without a
C compiler the install still succeeds and onebit falls back to its pure-PyTorch paths.
"""

from glob import glob

from setuptools import Extension, setup

# The C runtime as a plain shared library (no PyInit: onebit.deploy.runtime loads it with
# ctypes); the CLI's main is left out.
RUNTIME_SOURCES = sorted(set(glob("runtime/src/*.c")) - {"runtime/src/cli.c"})
RUNTIME_FLAGS = ["-ffp-contract=off", "-fno-trapping-math"]  # why: runtime/Makefile

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
            "onebit.deploy._kernels",
            sources=["src/onebit/deploy/kernels/bitconv.c"],
            extra_compile_args=["-O3", "-std=c11", "-fopenmp", "-ffp-contract=off"],
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
