"""torch.fx traces of onebit models that stop at onebit's own layers."""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from onebit.nn.binary import BinaryLayer
from onebit.nn.layers import BATCHNORMS


class LeafTracer(fx.Tracer):
    """Traces model code but not into binary layers, BatchNorms or onebit.nn blocks (whose
    binarizers branch on their inputs and would stop a trace)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            isinstance(m, (BinaryLayer, *BATCHNORMS))
            or type(m).__module__.startswith("onebit.nn")
            or super().is_leaf_module(m, qualname)
        )


def trace_graph(model: nn.Module) -> fx.Graph:
    """The graph of ``model``'s forward (:class:`LeafTracer`); fx's errors for untraceable
    code (data-dependent control flow) pass through."""
    return LeafTracer().trace(model)
