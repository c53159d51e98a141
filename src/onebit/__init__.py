"""onebit: binary neural networks — every published method as a composable option.

import onebit
m = onebit.create_model("resnet20", method="recu", bits="1w1a", num_classes=10, in_chans=1)
print(onebit.summary(m, input_size=(1, 1, 32, 32)))
onebit.deploy.export(m, "m.onebit"); rt = onebit.deploy.load("m.onebit")

Without PyTorch installed (a deployment target with numpy), ``import onebit`` gives
``onebit.deploy.load`` and ``onebit.errors`` only: a ``.onebit`` file runs in the C runtime.
"""

__version__ = "0.1.0"

try:
    import torch  # noqa: F401
except ModuleNotFoundError as _missing:
    if _missing.name != "torch":
        raise
    from onebit import deploy, errors

    __all__ = ["deploy", "errors"]
else:
    from onebit import deploy, errors, nn, quant
    from onebit.binarize import binarize
    from onebit.models import create_model, list_models, register_model
    from onebit.profile import OpsReport, count_ops, summary
    from onebit.quant import register_binarizer, register_method
    from onebit.train.techniques import register_technique

    __all__ = [
        "OpsReport",
        "binarize",
        "count_ops",
        "create_model",
        "deploy",
        "errors",
        "list_models",
        "nn",
        "quant",
        "register_binarizer",
        "register_method",
        "register_model",
        "register_technique",
        "summary",
    ]
