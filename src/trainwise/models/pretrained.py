"""torchvision's pretrained weights: which file, where it lives, reading it, and what it asks of the inputs.

torchvision names each weight set (`ResNet18_Weights.IMAGENET1K_V1`; `DEFAULT` is an alias of the
best one) and publishes it at a URL whose file name ends in the first hex digits of its sha256
(`resnet18-f37072fd.pth`). `torch.hub.load_state_dict_from_url` checks that prefix only while it
downloads; a file already in the cache is read as it is. So trainwise downloads itself (with the
prefix checked, into the same cache: `$TORCH_HOME/hub/checkpoints`, torch.hub's usual place), then
reads the file through `load_state_dict_from_url` with an explicit folder and name, the call
torchvision's own `Weights.get_state_dict` makes; a file named by `model.weights_file` goes through
the same call. The step identities hold the sha256 of the file read (trainwise.identity).

Nothing here prints: torch.hub would write "Downloading ..." to stdout, so the download is our own call.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn

from trainwise.errors import ConfigError
from trainwise.models.layers import head

log = logging.getLogger(__name__)

# Builders that change more than the class count when given weights (torchvision's googlenet.py and
# inception.py set transform_input, aux_logits and init_weights): built without the weights, as
# trainwise builds them (and as serving rebuilds them), they would not be the network the weights
# were trained as. Refused rather than half supported.
_UNSUPPORTED = ("googlenet", "inception_v3")


@dataclass(frozen=True)
class PretrainedWeights:
    """One torchvision weight set for one model, and the file it is read from."""

    ref: str  # model.name, torchvision:<builder>
    name: str  # canonical, with DEFAULT resolved: ResNet18_Weights.IMAGENET1K_V1
    url: str
    file: Path  # model.weights_file, or the file in torch's hub cache
    from_cache: bool  # file is torch's hub cache path (where a download goes)
    num_categories: int  # the classes the weights' own head predicts (1000 for ImageNet)
    crop_size: tuple[int, int]  # the image size the weights were trained and evaluated at
    resize_size: int | None
    mean: tuple[float, ...]  # the weights' input normalisation (RGB)
    std: tuple[float, ...]

    def where(self) -> str:
        """Where the file goes, for messages: the path, and the URL to fetch it from."""
        return f"{self.file} (the file at {self.url})"


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(ref: str, weights: str, weights_file: Path | None = None) -> PretrainedWeights:
    """The weight set `weights` (DEFAULT, IMAGENET1K_V1, or ResNet18_Weights.IMAGENET1K_V1) of model `ref`; no file I/O."""
    import torchvision

    name = ref.removeprefix("torchvision:")
    if name in _UNSUPPORTED:
        raise ConfigError(
            f"model.weights for {ref!r}: not supported; torchvision builds {name} differently with its weights "
            f"(aux_logits, transform_input), which trainwise does not reproduce. Use another backbone (e.g. torchvision:resnet50)"
        )
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"model.weights for {ref!r}: torchvision publishes no weights for {name!r} ({err})") from None
    member = enum.__members__.get(weights.removeprefix(f"{enum.__name__}."))
    if member is None:
        raise ConfigError(f"model.weights {weights!r} is not a weight set of {ref!r}; choose one of {', '.join(enum.__members__)}")
    transforms = member.transforms()
    crop = [int(side) for side in transforms.crop_size]
    return PretrainedWeights(
        ref=ref,
        name=f"{enum.__name__}.{member.name}",
        url=member.url,
        file=weights_file if weights_file is not None else hub_checkpoints() / os.path.basename(member.url),
        from_cache=weights_file is None,
        num_categories=len(member.meta["categories"]),
        crop_size=(crop[0], crop[-1]),
        resize_size=int(transforms.resize_size[0]) if transforms.resize_size else None,
        mean=tuple(float(m) for m in transforms.mean),
        std=tuple(float(s) for s in transforms.std),
    )


def fetch(weights: PretrainedWeights, *, download: bool) -> Path:
    """The weights' file, downloaded into torch's hub cache first when it is not there and `download` allows."""
    if weights.file.is_file():
        return weights.file
    if not weights.from_cache:
        raise ConfigError(
            f"model.weights_file {weights.file} does not exist; it should hold {weights.name}: fetch {weights.url} "
            f"on a machine with internet and put it there (or leave model.weights_file out to use torch's cache, {hub_checkpoints()})"
        )
    place = (
        f"put {weights.url} (fetched on a machine with internet) at {weights.file}, or name a copy of it in model.weights_file"
    )
    if not download:
        raise ConfigError(f"model.weights {weights.name} is not in torch's hub cache and model.download_weights is false: {place}")
    log.info("downloading %s from %s to %s", weights.name, weights.url, weights.file)
    weights.file.parent.mkdir(parents=True, exist_ok=True)
    prefix = torch.hub.HASH_REGEX.search(weights.file.name)
    try:
        # Writes to a temporary file beside the target and moves it there once the hash prefix matched.
        torch.hub.download_url_to_file(weights.url, str(weights.file), prefix.group(1) if prefix else None, progress=False)
    except (URLError, OSError, RuntimeError) as err:  # offline, refused, or a hash mismatch (RuntimeError)
        raise ConfigError(f"model.weights {weights.name} could not be downloaded ({err}); offline: {place}") from None
    return weights.file


def load_state_dict(weights: PretrainedWeights) -> dict[str, torch.Tensor]:
    """The state dict in the weights' file (which must exist: `fetch` first), read as torchvision reads it."""
    stat = weights.file.stat()
    return _read(str(weights.file), weights.url, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1)
def _read(file: str, url: str, size: int, mtime_ns: int) -> dict[str, torch.Tensor]:
    # Cached: the check step builds the model a dozen times; the size and time catch a replaced file.
    # The tensors are only ever copied from (load_state_dict copies), never changed in place.
    path = Path(file)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(path.parent), file_name=path.name, map_location="cpu", weights_only=True
        )
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:  # not a torch file, truncated, or unsafe
        raise ConfigError(f"model.weights: cannot read {path} as a torch state dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights: {path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def pretrained_network(weights: PretrainedWeights, params: dict[str, Any], num_outputs: int) -> nn.Module:
    """The network the weights were trained as, with their tensors, and a new output layer for `num_outputs`.

    Built as torchvision builds it for these weights (its class count, no num_classes of ours: with
    a project of 1000 classes the old head would survive), every tensor loaded strictly, then the
    output layer replaced by a fresh one of the right size. The result has the layout of the same
    model built untrained for `num_outputs` classes, which is how serving rebuilds it.
    """
    import torchvision

    from trainwise.models.heads import output_layer

    name = weights.ref.removeprefix("torchvision:")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=weights.num_categories, **params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.name {weights.ref!r} rejects model.params {params}: {err}") from err
    state = load_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"model.weights: the tensors of {weights.file} do not fit {weights.ref} built with model.params {params} "
            f"(is it {weights.name}? the size-dependent params must match the weights'): {str(err)[:600]}"
        ) from None
    old = output_layer(model)
    if old.out_features != weights.num_categories:
        raise ConfigError(
            f"model.weights for {weights.ref!r}: its last linear layer has {old.out_features} outputs, not the weights' "
            f"{weights.num_categories} classes, so it is not the output layer trainwise can replace"
        )
    path = next(p for p, module in model.named_modules() if module is old)
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent), attribute, head(old.in_features, num_outputs))
    log.debug("%s: loaded %d tensors from %s; new output layer %s (%d -> %d)", weights.name, len(state), weights.file, path, old.in_features, num_outputs)
    return model


def input_normalisation(weights: PretrainedWeights, channels: int) -> tuple[list[float], list[float]]:
    """The mean and std the network's inputs are normalised with: the weights' own.

    Grey images (one channel) take the mean of the three channels' means and stds: the first conv's
    weights are summed over its input channels (`grey_conv_weight`), so a grey pixel normalised this
    way gives about what the same grey in R, G and B normalised per channel gave the pretrained net.
    """
    if channels == len(weights.mean):
        return list(weights.mean), list(weights.std)
    return [sum(weights.mean) / len(weights.mean)] * channels, [sum(weights.std) / len(weights.std)] * channels


def adapted_conv_weight(weight: torch.Tensor, channels: int, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """A pretrained first conv's kernels for `channels` input channels and a kernel no larger than theirs.

    Fewer channels (grey images): summed over the input channels, so a grey image gives the response
    an RGB image with three equal channels gave. A smaller kernel (ResNet's small-input stem, 3x3 for
    7x7): the centre of each kernel; the rest of it is dropped.
    """
    out = weight
    if out.shape[1] != channels:
        if channels != 1:
            raise ValueError(f"pretrained first conv takes {out.shape[1]} channels; only 1 (grey) can be adapted, not {channels}")
        out = out.sum(dim=1, keepdim=True)
    height, width = kernel_size
    top, left = (out.shape[2] - height) // 2, (out.shape[3] - width) // 2
    return out[:, :, top : top + height, left : left + width].contiguous()


def adaptation_notes(weights: PretrainedWeights, input_shape: tuple[int, ...], *, small_stem: bool) -> list[str]:
    """What trainwise changed to fit the weights to this project's inputs, one sentence each (logged, and in the model's description)."""
    channels, height, width = input_shape
    notes = [f"{weights.ref} starts from {weights.name}; a new output layer for the project's classes; inputs normalised with the weights' mean and std"]
    if (height, width) != weights.crop_size:
        notes.append(
            f"image.size is {height}x{width}, the weights were trained at {weights.crop_size[0]}x{weights.crop_size[1]}: "
            f"the network sees {height}x{width} in training and in serving alike (set image.size: {weights.crop_size[0]} to match them)"
        )
    if channels != len(weights.mean):
        notes.append(
            f"grey images: the first conv's pretrained weights are summed over their {len(weights.mean)} input channels, "
            "and the grey channel is normalised with the mean of the weights' channel means and stds"
        )
    if small_stem:
        notes.append(
            "inputs under 64 px: ResNet's small-input stem (3x3 stride-1 conv1, no max-pool) replaces the pretrained 7x7 "
            "stride-2 conv1; its kernels start from the centre 3x3 of the pretrained ones (the outer ring is dropped). "
            "image.size of 64 or more keeps the pretrained stem whole"
        )
    return notes
