"""Weights on disk: safetensors files written atomically, and loaded by name and shape for transfer learning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trainwise.errors import ConfigError

log = logging.getLogger(__name__)


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's state dict to `path` as safetensors; readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    # Written beside the target and renamed over it: os.replace is atomic on one filesystem.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, temporary, metadata={"format": "pt"})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_initial_weights(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Copy every tensor of the safetensors file at `path` whose name and shape match the model.

    The rest is reported, not fatal: a new head for a different number of classes lands in
    "skipped_shape", the model's tensors absent from the file in "missing", the file's tensors the
    model lacks in "unexpected". A file that matches nothing is an error (wrong file or architecture).
    """
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise ConfigError(f"model.init {path}: cannot read it as a .safetensors file ({err})") from err
    state = model.state_dict()
    matching = {name: tensor for name, tensor in tensors.items() if name in state and state[name].shape == tensor.shape}
    report = {
        "loaded": sorted(matching),
        "skipped_shape": sorted(name for name in tensors if name in state and name not in matching),
        "missing": sorted(name for name in state if name not in tensors),
        "unexpected": sorted(name for name in tensors if name not in state),
    }
    if not matching:
        raise ConfigError(
            f"model.init {path}: none of its {len(tensors)} tensors matches the model ({type(model).__name__}) by name and shape; "
            f"file has e.g. {sorted(tensors)[:3]}, model has e.g. {sorted(state)[:3]}. Use weights saved from the same architecture"
        )
    model.load_state_dict(matching, strict=False)
    log.info(
        "initial weights from %s: %d tensors loaded, %d skipped for shape, %d missing, %d unexpected",
        path,
        *(len(names) for names in report.values()),
    )
    return report


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (requires_grad), each shared tensor counted once."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
