"""Models from outside the registry: torchvision's zoo and a user's own nn.Module class.

torchvision models are built untrained, or from torchvision's pretrained weights (`model.weights`,
see models.pretrained) with a new output layer; either way the layout is the one the untrained
build has, so serving rebuilds the network without the weights' file and loads the trained tensors.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainwise.errors import ConfigError
from trainwise.models.layers import LARGE_INPUT

if TYPE_CHECKING:
    from trainwise.models.pretrained import PretrainedWeights

log = logging.getLogger(__name__)

# Arguments a user's class may declare to learn about the data; each is passed only when declared.
_DATA_ARGUMENTS = ("in_channels", "num_classes", "num_outputs", "input_shape", "num_features")

# get_model arguments trainwise sets itself, so model.params may not.
_TORCHVISION_ARGUMENTS = ("weights", "num_classes")


def torchvision_model(
    ref: str, input_shape: tuple[int, ...], num_outputs: int, params: dict[str, Any], pretrained: PretrainedWeights | None = None
) -> nn.Module:
    """`torchvision:<name>` for `num_outputs` classes, adapted to the input channels; untrained, or from `pretrained`.

    `params` go to the model builder (e.g. `dropout` for MobileNet, `aux_logits: false` for
    Inception). ResNets on inputs under 64 pixels get a 3x3 stride-1 first conv and no max-pool,
    so a 32x32 image still leaves a 4x4 map at the end instead of 1x1. With pretrained weights the
    replaced first conv starts from the pretrained one (its kernel centres, summed over the input
    channels for grey images: models.pretrained.adapted_conv_weight) instead of from scratch.
    """
    import torchvision
    from torchvision.models import ResNet

    name = ref.removeprefix("torchvision:")
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name {ref!r} is an image model, but this project's inputs are table rows of shape {input_shape}; "
            f"use model.name: mlp"
        )
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"model.name {ref!r}: torchvision has no classification model {name!r}; {hint}"
            f"see torchvision.models.list_models(module=torchvision.models)"
        )
    reserved = sorted(set(params) & set(_TORCHVISION_ARGUMENTS))
    if reserved:
        raise ConfigError(
            f"model.params {reserved} for {ref!r} are set by trainwise (pretrained weights: model.weights; classes from the data)"
        )
    if pretrained is not None:
        from trainwise.models.pretrained import pretrained_network

        model = pretrained_network(pretrained, params, num_outputs)
    else:
        try:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **params)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.name {ref!r} rejects model.params {params}: {err}") from err
    channels = input_shape[0]
    if small_input_stem(ref, input_shape):
        assert isinstance(model, ResNet)
        model.conv1 = _replacement_conv(model.conv1, nn.Conv2d(channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False), pretrained)
        model.maxpool = nn.Identity()
    else:
        _adapt_first_conv(model, ref, channels, pretrained)
    return model


def small_input_stem(ref: str, input_shape: tuple[int, ...]) -> bool:
    """Does `torchvision:<ResNet>` get the small-input stem (3x3 stride-1 conv1, no max-pool) for these inputs?"""
    import torchvision

    builder = torchvision.models.get_model_builder(ref.removeprefix("torchvision:"))
    return builder.__module__ == "torchvision.models.resnet" and len(input_shape) == 3 and min(input_shape[1:]) < LARGE_INPUT


def _adapt_first_conv(model: nn.Module, ref: str, channels: int, pretrained: PretrainedWeights | None) -> None:
    """Replace the first Conv2d with one of the same settings that takes `channels` input channels."""
    convs = [(path, module) for path, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"model.name {ref!r} has no Conv2d layer to adapt to {channels} input channels")
    path, conv = convs[0]
    if conv.in_channels == channels:
        return
    parent_path, _, attribute = path.rpartition(".")
    replacement = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(model.get_submodule(parent_path), attribute, _replacement_conv(conv, replacement, pretrained))


def _replacement_conv(old: nn.Conv2d, new: nn.Conv2d, pretrained: PretrainedWeights | None) -> nn.Conv2d:
    """`new` initialised as torchvision initialises convs, or, after pretrained weights, from `old`'s kernels."""
    if pretrained is None:
        return _he_conv(new)
    if old.groups != 1:  # a grouped first conv: its kernels cannot be summed over channels the same way
        log.warning("%s: the first conv (groups=%d) starts untrained, not from the pretrained one", pretrained.ref, old.groups)
        return _he_conv(new)
    from trainwise.models.pretrained import adapted_conv_weight

    with torch.no_grad():
        new.weight.copy_(adapted_conv_weight(old.weight, new.in_channels, new.kernel_size))
        if new.bias is not None and old.bias is not None:
            new.bias.copy_(old.bias)
    return new


def _he_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # torchvision initialises its convs this way (ResNet, MobileNet, EfficientNet, ...); the
    # replacement should start like the layer it replaces, not with PyTorch's smaller default.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def user_model(ref: str, input_shape: tuple[int, ...], num_outputs: int, params: dict[str, Any]) -> nn.Module:
    """`/path/to/file.py:ClassName` or `package.module:ClassName`, built with the data arguments it declares.

    The class receives, among in_channels, num_classes, num_outputs, input_shape and num_features,
    those its signature names (in_channels only for images, num_features only for tables), plus
    model.params as keyword arguments.
    """
    location, _, class_name = ref.rpartition(":")
    module = _import_file(ref, Path(location)) if location.endswith(".py") else _import_module(ref, location)
    if not hasattr(module, class_name):
        found = sorted(
            key
            for key, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__
        )
        raise ConfigError(
            f"model.name {ref!r}: {location} has no {class_name!r}; nn.Module classes defined there: {', '.join(found) or 'none'}"
        )
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model.name {ref!r}: {class_name} is a {type(cls).__name__}, not a torch.nn.Module subclass")
    available: dict[str, Any] = {"num_classes": num_outputs, "num_outputs": num_outputs, "input_shape": input_shape}
    if len(input_shape) == 3:
        available["in_channels"] = input_shape[0]
    else:
        available["num_features"] = input_shape[0]
    clashing = sorted(set(params) & set(_DATA_ARGUMENTS))
    if clashing:
        raise ConfigError(f"model.params {clashing} for {ref!r} are set by trainwise from the data; remove them")
    signature = inspect.signature(cls)
    arguments = {key: value for key, value in available.items() if key in signature.parameters}
    try:
        signature.bind(**arguments, **params)
    except TypeError as err:
        raise ConfigError(
            f"model.name {ref!r} cannot be called with {sorted(arguments)} from the data and model.params {params}: {err}. "
            f"Its signature is {class_name}{signature}; trainwise passes those of {', '.join(_DATA_ARGUMENTS)} it declares "
            f"(in_channels for images, num_features for tables) plus model.params"
        ) from err
    try:
        return cls(**arguments, **params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.name {ref!r} rejects model.params {params}: {err}") from err


def _import_file(ref: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"model.name {ref!r}: the file {path} does not exist (relative paths are resolved from project.yaml)")
    # A stable, unique module name per file: two projects' model.py files must not replace each other.
    name = f"trainwise_user_model_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"model.name {ref!r}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as a normal import would, so dataclasses and pickling in it work.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(f"model.name {ref!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def _import_module(ref: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(
            f"model.name {ref!r}: importing {module_name} failed: {type(err).__name__}: {err}. The module must be importable "
            f"from the environment trainwise runs in (installed, or a file reference 'path/to/file.py:Class')"
        ) from err
