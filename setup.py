"""Builds the C kernels of onebit.deploy and onebit.quant (no torch needed at build time).

Everything else about the package is in pyproject.toml. The extension is optional: without a
C compiler the install still succeeds and onebit falls back to its pure-PyTorch paths.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
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
