"""The input spec of a model: :mod:`onebit.input_spec` (numpy only, so that a deployment
without PyTorch has it), under its name of the data package."""

from onebit.input_spec import CROP_FRACTION, TRANSFORMS, InputSpec

__all__ = ["CROP_FRACTION", "TRANSFORMS", "InputSpec"]
