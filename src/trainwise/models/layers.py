"""Building blocks shared by the registered architectures: input checks, conv blocks, stem, head."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from trainwise.errors import ConfigError

# Inputs at least this large get a downsampling stem (stride-2 conv then max-pool, as in ResNet):
# the first blocks then run at 1/16 of the pixels, which keeps a 224x224 input affordable, while
# 8x8 digits and 32x32 CIFAR keep every pixel.
LARGE_INPUT = 64

# Standard deviation of the output layer's initial weights. Small logits at init make the loss
# start at the prior's entropy (ln C for balanced classes) and let the class-prior bias decide the
# initial prediction; not zero, so the backbone still gets a gradient on the first step.
HEAD_INIT_STD = 0.01


def image_input(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(channels, height, width) of an image input, or a ConfigError saying which model fits instead."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name {name!r} is an image model and needs (channels, height, width) inputs, but this project's "
            f"inputs have shape {tuple(input_shape)}; for tables use model.name: mlp"
        )
    channels, height, width = (int(side) for side in input_shape)
    return channels, height, width


def positive_int(name: str, key: str, value: object) -> int:
    """An integer params value of at least 1, or a ConfigError naming model.params.<key>."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.params.{key} for {name!r} must be a whole number of at least 1, not {value!r}")
    return value


def non_negative_int(name: str, key: str, value: object) -> int:
    """An integer params value of at least 0, or a ConfigError naming model.params.<key>."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"model.params.{key} for {name!r} must be a whole number of at least 0, not {value!r}")
    return value


def probability(name: str, key: str, value: object) -> float:
    """A params value in [0, 1), such as a dropout rate, or a ConfigError naming model.params.<key>."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(f"model.params.{key} for {name!r} must be a number in [0, 1), not {value!r}")
    return float(value)


def flag(name: str, key: str, value: object) -> bool:
    """A true/false params value, or a ConfigError naming model.params.<key>."""
    if not isinstance(value, bool):
        raise ConfigError(f"model.params.{key} for {name!r} must be true or false, not {value!r}")
    return value


def conv_norm_relu(in_channels: int, out_channels: int, *, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    """3x3 conv, batch norm (or none), ReLU; the conv carries a bias only when no norm follows it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batch_norm),
        nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


def stem(in_channels: int, out_channels: int, min_side: int, *, batch_norm: bool = True) -> tuple[nn.Sequential, int]:
    """The first conv block, and the smaller side of the map it leaves (see LARGE_INPUT)."""
    if min_side < LARGE_INPUT:
        return conv_norm_relu(in_channels, out_channels, batch_norm=batch_norm), min_side
    block = conv_norm_relu(in_channels, out_channels, stride=2, batch_norm=batch_norm)
    block.append(nn.MaxPool2d(2))
    return block, math.ceil(min_side / 2) // 2


def head(in_features: int, num_outputs: int) -> nn.Linear:
    """The output layer every registered model exposes as `model.head`."""
    layer = nn.Linear(in_features, num_outputs)
    nn.init.normal_(layer.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer
