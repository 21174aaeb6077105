"""Checkpoints: written atomically, read with weights_only=True.

A checkpoint holds only tensors and plain containers (state dicts, RNG states, numbers, strings),
so `torch.load(..., weights_only=True)` can read it without unpickling code. It is written to a
temporary file in the same folder and renamed over the old one, so a kill mid-write leaves the
previous checkpoint intact rather than a truncated file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainwise.errors import TrainwiseError


class CheckpointError(TrainwiseError):
    """A checkpoint that cannot be read."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:  # also SIGTERM (Terminated) mid-write: leave no half-written file behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (RuntimeError, EOFError, OSError) as exc:  # torch reports corrupt or non-tensor pickles this way
        raise CheckpointError(f"{path} is not a readable trainwise checkpoint: {exc}") from None
