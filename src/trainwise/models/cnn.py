"""simple_cnn: the baseline network step 4 checks the pipeline with.

Three conv-BN-ReLU blocks doubling the width (w, 2w, 4w), each followed by a 2x2 max-pool while the
map is still at least 4 pixels on its smaller side, then global average pooling, dropout and a
linear head. 8x8 digits end on a 2x2 map, 32x32 on 4x4; inputs from 64 pixels up start with a
downsampling stem, so 224x224 ends on 7x7.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from trainwise.models import layers
from trainwise.models.registry import register_model

_WIDTH_MULTIPLIERS = (1, 2, 4)


class SimpleCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, *, width: int, dropout: float) -> None:
        super().__init__()
        channels, min_side = input_shape[0], min(input_shape[1:])
        widths = [width * multiplier for multiplier in _WIDTH_MULTIPLIERS]
        first, side = layers.stem(channels, widths[0], min_side)
        convs = [first, *(layers.conv_norm_relu(a, b) for a, b in itertools.pairwise(widths))]
        blocks: list[nn.Module] = []
        for conv in convs:
            blocks.append(conv)
            # Pooling a 2x2 map to 1x1 would leave global pooling nothing to average.
            if side >= 4:
                blocks.append(nn.MaxPool2d(2))
                side //= 2
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = layers.head(widths[-1], num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.pool(self.features(x)).flatten(1)))


@register_model("simple_cnn")
def simple_cnn(input_shape: tuple[int, ...], num_outputs: int, *, width: int = 32, dropout: float = 0.0) -> SimpleCNN:
    """The baseline CNN; `width` is the first block's channels, `dropout` the rate before the head."""
    shape = layers.image_input("simple_cnn", input_shape)
    return SimpleCNN(
        shape,
        num_outputs,
        width=layers.positive_int("simple_cnn", "width", width),
        dropout=layers.probability("simple_cnn", "dropout", dropout),
    )
