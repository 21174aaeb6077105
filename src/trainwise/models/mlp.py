"""mlp: a multilayer perceptron for tables (classification and regression).

Image inputs are flattened, so an MLP on 8x8 digits also works as a no-convolution control.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from trainwise.errors import ConfigError
from trainwise.models import layers
from trainwise.models.registry import register_model


class MLP(nn.Module):
    """Linear, batch norm (optional), ReLU, dropout per hidden layer; then a linear head."""

    def __init__(self, in_features: int, num_outputs: int, *, hidden: Sequence[int], dropout: float, batch_norm: bool) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        hidden_layers: list[nn.Module] = []
        for size in hidden:
            hidden_layers += [
                nn.Linear(in_features, size, bias=not batch_norm),
                nn.BatchNorm1d(size) if batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
            in_features = size
        self.hidden = nn.Sequential(*hidden_layers)
        self.head = layers.head(in_features, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(self.flatten(x)))


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    hidden: Sequence[int] | None = None,
    depth: int | None = None,
    width: int | None = None,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> MLP:
    """`hidden`: the hidden layer sizes ([] is a linear model); or `depth` layers starting at `width`
    units and halving (the default, depth 2 and width 128, is [128, 64]; depth 0 is a linear model,
    what the classical baseline fits, so a search over depth can always match it); `dropout`: rate
    after each hidden layer; `batch_norm`: normalise each hidden layer (helps deeper MLPs, needs
    batches of 2 or more)."""
    if hidden is None:
        depth = layers.non_negative_int("mlp", "depth", 2 if depth is None else depth)
        width = layers.positive_int("mlp", "width", 128 if width is None else width)
        hidden = [max(1, width // 2**i) for i in range(depth)]
    elif depth is not None or width is not None:  # one would be ignored: a search over it would train one network
        raise ConfigError("model.params for 'mlp': give hidden (the layer sizes) or depth and width, not both")
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        raise ConfigError(f"model.params.hidden for 'mlp' must be a list of layer sizes such as [128, 64], not {hidden!r}")
    return MLP(
        math.prod(input_shape),
        num_outputs,
        hidden=[layers.positive_int("mlp", "hidden", size) for size in hidden],
        dropout=layers.probability("mlp", "dropout", dropout),
        batch_norm=layers.flag("mlp", "batch_norm", batch_norm),
    )
