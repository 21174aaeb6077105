"""Exact resume: a run killed by SIGTERM and resumed from its checkpoint ends where an uninterrupted run ends.

Early stopping is on, so the patience counter and the best epoch's weights must travel in the
checkpoint; augmentation and dropout are on, so every RNG the epoch draws from must too.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torchvision.transforms import v2

from trainwise.callbacks import CheckpointCallback
from trainwise.checkpoints import load_checkpoint
from trainwise.data.transforms import augment_batch
from trainwise.engine import Callback, EngineConfig, FitResult, TensorData, Trainer
from trainwise.errors import Terminated
from trainwise.metrics import CLASSIFICATION
from trainwise.signals import sigterm_raises

TIMINGS = {"epoch_seconds", "images_per_second"}  # wall-clock: never equal between two runs


def digits() -> tuple[TensorData, TensorData]:
    data = load_digits()
    x = torch.from_numpy((data.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(data.target).long()
    return TensorData(x[:256], y[:256]), TensorData(x[1400:1500], y[1400:1500])


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip


AUGMENT = v2.Compose([v2.RandomCrop(8, padding=1), v2.RandomRotation(8)])  # torch's global RNG, per image


def train_transform(x: torch.Tensor) -> torch.Tensor:
    """The engine's per-batch augmentation, plus draws from numpy and python's random as a user's code may make."""
    x = augment_batch(x, AUGMENT).float() / 255.0
    noise = float(np.random.uniform(0.0, 0.05)) + random.uniform(0.0, 0.05)
    return x + noise * torch.randn_like(x)


# A high LR on 256 digits plateaus early: stopped after 6 of 8 epochs (best at 3), about 8 s on 2 cores.
CONFIG = EngineConfig(
    task=CLASSIFICATION, num_outputs=10, epochs=8, batch_size=32, lr=0.1, device="cpu", precision="fp32", early_stopping_patience=3
)


class SigtermAt(Callback):
    """Sends this process a real SIGTERM at the end of epoch `at`, after the checkpoint of that epoch is written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def fit(folder: Path, *, seed: int, extra: list[Callback] | None = None, resume: Path | None = None) -> tuple[Trainer, FitResult]:
    # A resumed run starts from other seeds, as a fresh process would: only the checkpoint can make it agree.
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    trainer = Trainer(cnn(), CONFIG, train_transform=train_transform, callbacks=[CheckpointCallback(folder), *(extra or [])])
    train, val = digits()
    with sigterm_raises():
        result = trainer.fit(train, val, resume=load_checkpoint(resume / "last.pt") if resume else None)
    return trainer, result


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def test_a_run_killed_by_sigterm_and_resumed_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    straight_trainer, straight = fit(tmp_path / "straight", seed=0)
    epochs = len(straight.history)
    assert straight.stop_reason.startswith("early stopping") and epochs < CONFIG.epochs  # otherwise patience is never tested

    # Killed after the best epoch, while the patience counter is counting, before it runs out.
    at = random.Random(8).choice(range(straight.best_epoch + 1, epochs))
    with pytest.raises(Terminated):
        fit(tmp_path / "killed", seed=0, extra=[SigtermAt(at)])
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == at  # weights_only=True

    resumed_trainer, resumed = fit(tmp_path / "resumed", seed=123, resume=tmp_path / "killed")

    assert len(resumed.history) == epochs, f"uninterrupted {epochs} epochs, resumed from epoch {at} ran {len(resumed.history)}"
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert (resumed.best_epoch, resumed.best_value, resumed.stop_reason) == (straight.best_epoch, straight.best_value, straight.stop_reason)
    for name, tensor in straight_trainer.model.state_dict().items():
        assert torch.equal(resumed_trainer.model.state_dict()[name], tensor), name
    for name, tensor in straight.best_state.items():
        assert torch.equal(resumed.best_state[name], tensor), name
    assert torch.equal(resumed_trainer.state_dict()["rng"]["torch"], straight_trainer.state_dict()["rng"]["torch"])
