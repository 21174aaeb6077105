"""The output layer: finding it, starting its bias at the prior, and freezing everything before it."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from trainwise.errors import ConfigError

log = logging.getLogger(__name__)

# A class absent from the training data would get log(0) = -inf: the loss with label smoothing is
# then inf (checked: F.cross_entropy(..., label_smoothing=0.1) on a -inf logit), and a -inf bias
# never learns. A floor keeps such a class merely very unlikely at the start.
_MIN_PRIOR = 1e-6


def output_layer(model: nn.Module) -> nn.Linear:
    """The linear layer producing the logits: `model.head` for registered models, else the last nn.Linear."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear output layer, which the class-prior bias and backbone freezing need; "
            f"give the model a `head` nn.Linear, or set model.prior_bias_init: false and model.freeze_backbone_epochs: 0"
        )
    return linears[-1]


def init_output_bias(model: nn.Module, prior: Sequence[float] | float) -> None:
    """Start the output bias at the prior, so the first predictions are the prior and not noise.

    Classification: `prior` holds one share (or count) per class; the bias becomes log(prior), and
    with the small head weights of the registered models the softmax at init is the prior and the
    loss at init its entropy. Regression (one output): `prior` is the target mean.
    """
    layer = output_layer(model)
    if layer.bias is None:
        raise ConfigError(f"the output layer of {type(model).__name__} has no bias; set model.prior_bias_init: false")
    if isinstance(prior, numbers.Real):
        if layer.out_features != 1 or not math.isfinite(prior):
            raise ValueError(f"a single prior value (the target mean) must be finite and needs one output; got {prior}")
        values = torch.tensor([float(prior)])
    else:
        shares = torch.tensor([float(value) for value in prior], dtype=torch.float64)
        if len(shares) != layer.out_features or len(shares) < 2:
            raise ValueError(f"the prior has {len(shares)} classes, the model {layer.out_features} outputs")
        if (shares < 0).any() or shares.sum() <= 0 or not shares.isfinite().all():
            raise ValueError(f"the prior must be non-negative shares or counts with a positive sum, not {prior}")
        shares = (shares / shares.sum()).clamp_min(_MIN_PRIOR)
        values = shares.log()
    with torch.no_grad():
        layer.bias.copy_(values.to(layer.bias.dtype))
    log.debug("output bias set to %s", values.tolist())


def freeze_backbone(model: nn.Module, frozen: bool) -> list[str]:
    """Set requires_grad to `not frozen` on every parameter outside the output layer; the names changed."""
    head = {id(parameter) for parameter in output_layer(model).parameters()}
    changed = []
    for name, parameter in model.named_parameters():
        if id(parameter) not in head and parameter.requires_grad == frozen:
            parameter.requires_grad_(not frozen)
            changed.append(name)
    log.debug("%s %d backbone parameters", "froze" if frozen else "unfroze", len(changed))
    return changed
