"""The training loop on real small data (scikit-learn's digits and diabetes), CPU, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits
from torch import nn

from trainwise.checkpoints import load_checkpoint, save_checkpoint
from trainwise.engine import (
    Callback,
    EngineConfig,
    NonFiniteLossError,
    StopTraining,
    TensorData,
    Trainer,
    cpu_has_native_bf16,
    select_precision,
)
from trainwise.metrics import CLASSIFICATION, REGRESSION


def digits() -> tuple[TensorData, TensorData]:
    data = load_digits()
    x = torch.from_numpy((data.images * 255 / 16).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8) uint8 like the cache
    y = torch.from_numpy(data.target).long()
    return TensorData(x[:1400], y[:1400]), TensorData(x[1400:], y[1400:])


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, 10),
    )  # fmt: skip


def config(**overrides: object) -> EngineConfig:
    base = {"task": CLASSIFICATION, "num_outputs": 10, "epochs": 3, "batch_size": 64, "lr": 0.01, "device": "cpu", "precision": "fp32"}
    return EngineConfig(**{**base, **overrides})  # type: ignore[arg-type]


def fit(cfg: EngineConfig, seed: int = 0, callbacks: list[Callback] | None = None, **kwargs: object) -> tuple[Trainer, object]:
    torch.manual_seed(seed)
    train, val = digits()
    trainer = Trainer(cnn(), cfg, callbacks=callbacks or [])
    return trainer, trainer.fit(train, val, **kwargs)  # type: ignore[arg-type]


def test_learns_digits_and_reports_per_epoch_metrics() -> None:
    _, result = fit(config(epochs=5, batch_size=32, lr=0.02))
    assert len(result.history) == 5
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_accuracy"] > 0.8  # the last 397 digits come from other writers: a hard split
    assert {"val_loss", "val_f1_macro", "val_log_loss", "lr", "images_per_second", "epoch_seconds"} <= set(last)
    assert result.best_epoch >= 1 and result.best_value == max(h["val_accuracy"] for h in result.history)


def test_same_seed_same_result_on_cpu() -> None:
    _, a = fit(config())
    _, b = fit(config())
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    _, c = fit(config(), seed=1)
    assert [h["val_loss"] for h in c.history] != [h["val_loss"] for h in a.history]


class Interrupt(Callback):
    """Saves a checkpoint after each epoch and stops after `at` epochs, like a killed run."""

    def __init__(self, path: Path, at: int) -> None:
        self.path, self.at = path, at

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        save_checkpoint(self.path, trainer.state_dict())
        if epoch == self.at:
            raise StopTraining("interrupted")


def test_resume_gives_the_same_final_metrics_as_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = config(epochs=4)
    _, straight = fit(cfg)
    _, first_half = fit(cfg, callbacks=[Interrupt(tmp_path / "ckpt.pt", at=2)])
    assert len(first_half.history) == 2
    state = load_checkpoint(tmp_path / "ckpt.pt")  # weights_only=True
    torch.manual_seed(123)  # a fresh process: different global RNG until the checkpoint restores it
    train, val = digits()
    resumed = Trainer(cnn(), cfg).fit(train, val, resume=state)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]
    assert resumed.best_value == straight.best_value


def test_nan_loss_names_the_step_and_the_last_checkpoint() -> None:
    class Poison(Callback):
        def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            trainer.last_checkpoint = "/runs/x/checkpoint.pt"
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"loss became NaN or infinite at epoch 2, step 1 .*last good checkpoint is /runs/x/checkpoint\.pt"):
        fit(config(epochs=3), callbacks=[Poison()])


def test_early_stopping_stops_when_the_metric_stalls() -> None:
    _, result = fit(config(epochs=30, lr=1e-6, early_stopping_patience=2, schedule="none"))
    assert len(result.history) < 30 and result.stop_reason.startswith("early stopping")


def test_early_stopping_waits_for_the_one_cycle_warmup() -> None:
    """While one-cycle's rate still rises (its first 30%: 6 of 20 epochs) stalled epochs do not count."""
    _, result = fit(config(epochs=20, lr=1e-6, early_stopping_patience=2, schedule="onecycle"))
    assert result.stop_reason.startswith("early stopping")
    assert 6 + 2 <= len(result.history) < 20  # without the wait: 3 (a chance gain at lr 1e-6 may reset the count)


def test_callback_can_stop_training_and_sees_device_losses() -> None:
    seen: list[torch.Tensor] = []

    class Prune(Callback):
        def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
            seen.append(loss)

        def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            raise StopTraining("pruned")

    _, result = fit(config(epochs=5), callbacks=[Prune()])
    assert result.stop_reason == "pruned" and len(result.history) == 1
    assert len(seen) == 22 and all(isinstance(loss, torch.Tensor) for loss in seen)  # 1400 / 64, last batch kept


def test_regression_metrics_are_in_target_units() -> None:
    data = load_diabetes()
    x = torch.from_numpy(((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32))
    mean, std = float(data.target.mean()), float(data.target.std())
    y = torch.from_numpy(((data.target - mean) / std).astype(np.float32))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    cfg = EngineConfig(task=REGRESSION, num_outputs=1, epochs=30, batch_size=32, lr=0.01, device="cpu", metric="rmse", direction="minimize", target_scale=(mean, std))
    result = Trainer(model, cfg).fit(TensorData(x[:350], y[:350]), TensorData(x[350:], y[350:]))
    last = result.history[-1]
    assert 40 < last["val_rmse"] < 70  # the target's std is 77: a real fit, in the target's units
    assert 0.2 < last["val_r2"] < 0.8
    assert result.best_value == min(h["val_rmse"] for h in result.history)


def test_precision_choice() -> None:
    cpu = torch.device("cpu")
    # bf16 only where the CPU computes it natively; emulated bf16 is slower than fp32.
    native = cpu_has_native_bf16()
    assert select_precision("auto", cpu, images=True) == (torch.bfloat16 if native else None)
    assert select_precision("auto", cpu, images=False) is None
    assert select_precision("fp32", cpu, images=True) is None


def test_bf16_autocast_on_cpu_still_learns() -> None:
    _, result = fit(config(epochs=5, batch_size=32, lr=0.02, precision="bf16"))
    assert result.history[-1]["val_accuracy"] > 0.8


def test_a_tie_on_the_metric_goes_to_the_epoch_with_the_lower_loss() -> None:
    """Accuracy reaches its plateau (1.0) at once on separable data; the loss keeps falling. The best
    epoch is the one with the lowest loss on the plateau, not the first to reach it."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 2, generator=generator) + (y.float() * 8 - 4).unsqueeze(1)
    train, val = TensorData(x[:150], y[:150]), TensorData(x[150:], y[150:])
    torch.manual_seed(0)
    trainer = Trainer(nn.Linear(2, 2), config(num_outputs=2, epochs=8, batch_size=16, lr=0.01, schedule="none"))
    result = trainer.fit(train, val)
    plateau = [h for h in result.history if h["val_accuracy"] == 1.0]
    assert len(plateau) >= 3 and plateau[0]["epoch"] < result.best_epoch  # ties after the first
    assert result.best_epoch == min(plateau, key=lambda h: h["val_loss"])["epoch"]
