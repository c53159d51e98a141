"""The model zoo: ``create_model(name, method=..., bits=...)`` and ``list_models(pattern)``.

Importing this package registers every model family.
"""

from onebit.models import (  # noqa: F401  (registers models)
    birealnet,
    firnet,
    mobilenet,
    reactnet,
    real2binary,
    resnet,
    resnet_cifar,
    vgg_small,
    wide_resnet,
)
from onebit.models.registry import (
    ModelOptions,
    StemOptions,
    check_model_spec,
    create_model,
    default_input_size,
    default_input_spec,
    list_models,
    model_entry,
    register_model,
)

__all__ = [
    "ModelOptions",
    "StemOptions",
    "check_model_spec",
    "create_model",
    "default_input_size",
    "default_input_spec",
    "list_models",
    "model_entry",
    "register_model",
]
