"""Model architectures by name: a registry, a factory, and the output-layer and weight helpers around them.

`create_model(ref, input_shape=..., num_outputs=...)` builds a registered architecture
(`list_models()`), a torchvision classification model (`torchvision:resnet18`) or a user's own
nn.Module class (`path/to/file.py:Class`, `package.module:Class`).
"""

# Importing the architecture modules registers them.
from trainwise.models import cnn, mlp, resnet
from trainwise.models.heads import freeze_backbone, init_output_bias, output_layer
from trainwise.models.registry import create_model, list_models, register_model
from trainwise.models.weights import count_parameters, load_initial_weights, save_weights

__all__ = [
    "cnn",
    "count_parameters",
    "create_model",
    "freeze_backbone",
    "init_output_bias",
    "list_models",
    "load_initial_weights",
    "mlp",
    "output_layer",
    "register_model",
    "resnet",
    "save_weights",
]
