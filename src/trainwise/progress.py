"""Progress a user can see while a model trains: tqdm bars on a terminal, and a log line every 30 s anywhere.

The bars (epochs, and the batches of the current epoch) show only on a terminal (tqdm's
`disable=None`); the log lines go through logging whatever the output, so a job's log, a notebook or
a CI console still hears from a long fit at least every `every` seconds.
"""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from trainwise.engine import Callback, FitResult, Trainer

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0
SHOWN_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_rmse", "val_r2")


class ProgressCallback(Callback):
    """Epoch and batch bars named `desc`, and a log line at least every `every` seconds of training."""

    def __init__(self, desc: str, *, every: float = LOG_EVERY_SECONDS, leave: bool = True) -> None:
        self.desc = desc
        self.every = every
        self.leave = leave
        self._epochs: tqdm | None = None
        self._batches: tqdm | None = None
        self._last_log = 0.0
        self._step_in_epoch = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        total = trainer.config.epochs
        self._epochs = tqdm(total=total, initial=min(trainer.epoch, total), desc=self.desc, unit="epoch", leave=self.leave, disable=None)
        self._last_log = time.monotonic()
        self._step_in_epoch = 0

    def on_batch_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self._batches is None:
            self._batches = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {trainer.epoch + 1}", unit="batch", leave=False, disable=None)
        self._step_in_epoch += 1
        self._batches.update()
        now = time.monotonic()
        if now - self._last_log >= self.every:  # reading the loss syncs the device: only this often
            self._last_log = now
            log.info(
                "%s: epoch %d/%d, batch %d/%d, loss %.4f",
                self.desc, trainer.epoch + 1, trainer.config.epochs, self._step_in_epoch, trainer.steps_per_epoch, float(loss),
            )  # fmt: skip

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        self._step_in_epoch = 0
        shown = {k.removeprefix("val_"): f"{metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics}
        if self._epochs is not None:
            self._epochs.set_postfix(shown, refresh=False)
            self._epochs.update()
        now = time.monotonic()
        if now - self._last_log >= self.every:
            self._last_log = now
            log.info("%s: epoch %d/%d, %s", self.desc, epoch, trainer.config.epochs, ", ".join(f"{k} {v}" for k, v in shown.items()))

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()
        self._batches = self._epochs = None
