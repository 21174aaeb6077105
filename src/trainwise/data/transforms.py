"""Augmentation and normalisation on batches of tensors (torchvision transforms v2).

Applied per batch on the device, to uint8 (N, C, H, W) tensors straight from the decoded cache:
augment first (on uint8, as the v2 transforms expect), then scale to 0..1 and normalise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from trainwise.config import AugmentConfig


def build_augmentation(augment: AugmentConfig, size: tuple[int, int]) -> v2.Compose:
    """The random transforms the config asks for (identity when it asks for none)."""
    steps: list[torch.nn.Module] = []
    if augment.crop_padding:
        # Zero padding, the usual recipe: reflecting an 8x8 digit's edges paints stripes into it.
        steps.append(v2.RandomCrop(size, padding=augment.crop_padding))
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.rotation:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.color_jitter:
        s = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment.erasing:
        steps.append(v2.RandomErasing(p=augment.erasing))
    return v2.Compose(steps)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, C, H, W) float 0..1 -> zero mean, unit std per channel (statistics of the training split)."""
    m = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s


def denormalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of `normalize`, clipped to 0..1, for showing a batch as the network saw it."""
    m = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch * s + m).clamp(0, 1)


def augment_batch(images: torch.Tensor, transform: v2.Compose) -> torch.Tensor:
    """Apply `transform` to each image of a uint8 (N, C, H, W) batch independently.

    v2 transforms draw one set of random parameters per call, so a whole-batch call would shift
    every image by the same offset; per-image calls keep the augmentation varied.
    """
    return torch.stack([transform(image) for image in images])
