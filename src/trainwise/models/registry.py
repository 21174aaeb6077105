"""The model registry and factory: names to architectures, and `create_model` for every kind of reference.

A registered factory has the signature `(input_shape, num_outputs, **params)` and returns an
nn.Module whose output layer is `model.head`. References that are not registered names go to
`external` (torchvision's zoo, a user's own class).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainwise.errors import ConfigError
from trainwise.models import external

if TYPE_CHECKING:
    from trainwise.models.pretrained import PretrainedWeights

log = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]

_FACTORIES: dict[str, ModelFactory] = {}

# The arguments trainwise gives every registered factory itself; never valid in model.params.
_FACTORY_ARGUMENTS = ("input_shape", "num_outputs")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that makes a factory buildable as `create_model(name, ...)`."""

    def register(factory: ModelFactory) -> ModelFactory:
        if name in _FACTORIES:
            raise ValueError(f"a model named {name!r} is already registered ({_FACTORIES[name].__module__})")
        _FACTORIES[name] = factory
        return factory

    return register


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_FACTORIES)


def create_model(
    ref: str,
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    params: Mapping[str, Any] | None = None,
    pretrained: PretrainedWeights | None = None,
) -> nn.Module:
    """Build the network named by `ref` for inputs of `input_shape` and `num_outputs` outputs.

    `ref` is a registered name, `torchvision:<name>`, `/path/to/file.py:ClassName` or
    `package.module:ClassName`. `input_shape` is (C, H, W) for images or (n_features,) for tables;
    `num_outputs` is the number of classes, or 1 for regression. `pretrained` (torchvision models
    only): start from these weights (models.pretrained), with the same layout as without them. The
    model comes back in train mode, on the CPU, after one forward pass on zeros that proves it
    returns (N, num_outputs).
    """
    if len(input_shape) not in (1, 3) or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (n_features,) with positive sides, not {input_shape}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, not {num_outputs}")
    input_shape = tuple(int(side) for side in input_shape)
    params = dict(params or {})
    if pretrained is not None and not ref.startswith("torchvision:"):
        raise ConfigError(f"model.weights are torchvision's pretrained weights; {ref!r} is not a torchvision model")
    if ref.startswith("torchvision:"):
        model = external.torchvision_model(ref, input_shape, num_outputs, params, pretrained)
    elif ":" in ref:
        model = external.user_model(ref, input_shape, num_outputs, params)
    else:
        model = _registered_model(ref, input_shape, num_outputs, params)
    _check_output(model, ref, input_shape, num_outputs)
    log.debug("built %s for inputs %s and %d outputs", ref, input_shape, num_outputs)
    return model


def _registered_model(name: str, input_shape: tuple[int, ...], num_outputs: int, params: dict[str, Any]) -> nn.Module:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(
            f"model.name {name!r} is not a registered model; registered: {', '.join(list_models())}. "
            f"Other models: 'torchvision:<name>' (e.g. torchvision:resnet18), 'path/to/file.py:ClassName' "
            f"or 'package.module:ClassName'"
        )
    allowed = [key for key in inspect.signature(factory).parameters if key not in _FACTORY_ARGUMENTS]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"model.params for {name!r} has unknown keys {unknown}; {name!r} accepts: {', '.join(allowed) or 'no params'}"
        )
    return factory(input_shape, num_outputs, **params)


def _check_output(model: nn.Module, ref: str, input_shape: tuple[int, ...], num_outputs: int) -> None:
    """Run two zero inputs through the model in eval mode and insist on (2, num_outputs) back.

    A wrong output size or an input the architecture cannot take (ViT at 32x32) fails here, when the
    model is built, naming the reference, instead of deep inside training. Eval mode and no_grad
    leave batch-norm statistics and the random stream untouched; lazy layers get their shapes.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ConfigError(
            f"model.name {ref!r} fails on inputs of shape {input_shape}: {err}. Check that it takes this input "
            f"size (image.size, image.channels) and the params given"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, num_outputs):
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"model.name {ref!r} returns {got} for a batch of 2, expected one tensor of shape (2, {num_outputs}): "
            f"the model must output one logit per class (or one value for regression)"
        )
