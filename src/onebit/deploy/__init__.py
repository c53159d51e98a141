"""Deployment: export a trained BNN to one bit-packed file, run it with xnor-popcount kernels.

    onebit.deploy.export(model, "model.onebit")        # the network as a graph of ops
    rt = onebit.deploy.load("model.onebit")            # the C runtime (runtime/), numpy in/out
    logits = rt(images)                                # equals model.eval()(images)

See docs/deploy.md for the file format, the kernels and the measured speed. Loading needs
numpy, not PyTorch; exporting and ``onebit bench`` need PyTorch.
"""

from onebit.deploy.engine import (
    KERNEL_ENV,
    DeployedModel,
    available_kernels,
    load,
    select_kernel,
)

__all__ = ["KERNEL_ENV", "DeployedModel", "available_kernels", "load", "select_kernel"]

try:
    from onebit.deploy.export import export, export_graph
except ModuleNotFoundError as _missing:  # a deployment target without PyTorch: load only
    if _missing.name != "torch":
        raise
else:
    __all__ += ["export", "export_graph"]
