"""resnet_small: a ResNet for small images, with depth, width, dropout and batch-norm switches.

A 3x3 stem (downsampling only from 64 pixels up, see layers.LARGE_INPUT), three stages of basic
residual blocks at widths w, 2w, 4w with strides 1, 2, 2 (32x32 ends on 8x8, 8x8 digits on 2x2),
global average pooling, dropout and a linear head: CIFAR's ResNet-20 shape at depth=3, width=16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainwise.models import layers
from trainwise.models.registry import register_model

_STAGES = ((1, 1), (2, 2), (4, 2))  # (width multiplier, stride of the stage's first block)


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convs on the residual branch; a 1x1 conv on the shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batch_norm)
        self.norm1 = _norm(out_channels, batch_norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batch_norm)
        self.norm2 = _norm(out_channels, batch_norm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not batch_norm),
                _norm(out_channels, batch_norm),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_outputs: int,
        *,
        width: int,
        depth: int,
        dropout: float,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        self.stem, _ = layers.stem(input_shape[0], width, min(input_shape[1:]), batch_norm=batch_norm)
        blocks: list[BasicBlock] = []
        in_channels = width
        for multiplier, stride in _STAGES:
            out_channels = width * multiplier
            for index in range(depth):
                blocks.append(
                    BasicBlock(
                        in_channels,
                        out_channels,
                        stride=stride if index == 0 else 1,
                        batch_norm=batch_norm,
                    )
                )
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = layers.head(in_channels, num_outputs)
        # He initialisation (fan_in) keeps the variance of the signal through each conv and ReLU. It
        # matters without batch norm: PyTorch's default init (weight variance 1/(3 fan_in)) would cut
        # the second moment about 6x per conv and ReLU.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if not batch_norm:
            # Without normalisation each block adds its branch's full variance to the stream, so the
            # activations would grow as 2^blocks. Scaling each branch's last conv by 1/sqrt(blocks)
            # bounds the growth to about e (the Fixup idea); unlike zero-init, every weight still gets
            # a gradient on the first step.
            with torch.no_grad():
                for block in blocks:
                    block.conv2.weight.mul_(1 / math.sqrt(len(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.pool(self.blocks(self.stem(x))).flatten(1)))


@register_model("resnet_small")
def resnet_small(
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    width: int = 32,
    depth: int = 2,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> ResNetSmall:
    """`width`: stem and first-stage channels; `depth`: blocks per stage; `dropout`: rate before the head;
    `batch_norm`: False trains without any normalisation (useful for small batches or as a control)."""
    shape = layers.image_input("resnet_small", input_shape)
    return ResNetSmall(
        shape,
        num_outputs,
        width=layers.positive_int("resnet_small", "width", width),
        depth=layers.positive_int("resnet_small", "depth", depth),
        dropout=layers.probability("resnet_small", "dropout", dropout),
        batch_norm=layers.flag("resnet_small", "batch_norm", batch_norm),
    )
