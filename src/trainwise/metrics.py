"""Metrics accumulated on the device during an epoch and read once at its end, scored by scikit-learn.

Reading a metric (`.item()`) forces the host to wait for the device: one sync per batch per metric
costs real time on a GPU. So batches append their predictions and targets to tensors on the device
(int64 or float64 per item: 1 MB for 60,000 items) and the host reads them once per epoch, where
scikit-learn computes every metric. Training, evaluation, tuning, promotion and the reports all
score through the functions below, so a metric has one definition: scikit-learn's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn import metrics as sk

CLASSIFICATION = "classification"
REGRESSION = "regression"

CLASSIFICATION_NAMES = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")
REGRESSION_NAMES = ("rmse", "mae", "r2")


class MetricAccumulator:
    """Loss and task metrics over one pass; `update` per batch, `compute` once."""

    def __init__(self, task: str, num_classes: int, device: torch.device, target_scale: tuple[float, float] = (0.0, 1.0)) -> None:
        self.task = task
        self.num_classes = num_classes
        self.device = device
        self.mean, self.std = target_scale  # regression targets are trained standardised; metrics in their units
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0  # items seen: a host-side int, known without reading the device
        self.predicted: list[torch.Tensor] = []  # per batch, on the device until compute()
        self.actual: list[torch.Tensor] = []
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        n = targets.shape[0]
        self.loss_sum += loss.detach().double() * n
        self.count += n
        if self.task == CLASSIFICATION:
            self.predicted.append(outputs.argmax(dim=1))  # ties go to the first class, as in numpy
            self.actual.append(targets.long())
            # Log loss as a running sum, not n x C probabilities kept for scikit-learn: the mean
            # negative log-likelihood of the true class is sklearn.metrics.log_loss (tests/unit/
            # test_metrics.py checks it), except that scikit-learn clips probabilities at float64
            # epsilon, capping an item at -ln(eps) = 36 nats; this sum is exact. Without label
            # smoothing, whatever the training loss uses.
            self.nll_sum += torch.nn.functional.cross_entropy(outputs.float(), targets, reduction="sum").double()
        else:
            self.predicted.append(outputs.reshape(-1).double() * self.std + self.mean)
            self.actual.append(targets.reshape(-1).double() * self.std + self.mean)

    def compute(self) -> dict[str, float]:
        """All metrics as floats (this is the sync point)."""
        if not self.count:  # no items: every metric is undefined, and NaN is never a best epoch
            names = CLASSIFICATION_NAMES if self.task == CLASSIFICATION else REGRESSION_NAMES
            return dict.fromkeys(("loss", *names), math.nan)
        result = {"loss": float(self.loss_sum.item()) / self.count}
        predicted, actual = torch.cat(self.predicted).cpu().numpy(), torch.cat(self.actual).cpu().numpy()
        if self.task == CLASSIFICATION:
            result.update(classification_metrics(actual, predicted))
            result["log_loss"] = float(self.nll_sum.item()) / self.count
        else:
            result.update(regression_metrics(actual, predicted))
        return result


def classification_metrics(true: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """accuracy, balanced accuracy and macro F1 of predicted labels (indices or names), by scikit-learn.

    No `labels=`: scikit-learn then averages over the classes present in `true` or `predicted`. A
    class predicted but never true counts (its F1 is 0); a class neither true nor predicted has no
    defined F1 and does not count, so a validation split that happens to lack a class is not marked
    down for it.
    """
    true, predicted = np.asarray(true), np.asarray(predicted)
    return {
        "accuracy": float(sk.accuracy_score(true, predicted)),
        # balanced_accuracy_score is this macro recall over the classes of y_true; it warns whenever
        # the model predicts a class the split lacks, ordinary in early epochs, so we ask recall_score.
        "balanced_accuracy": float(sk.recall_score(true, predicted, labels=np.unique(true), average="macro", zero_division=0)),
        # zero_division only names what scikit-learn already does: F1 is never 0/0 for a present class
        "f1_macro": float(sk.f1_score(true, predicted, average="macro", zero_division=0)),
    }


def per_class_metrics(true: ArrayLike, predicted: ArrayLike, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class index 0..num_classes-1, by scikit-learn.

    `labels=range(num_classes)`: one value per class, in class order, so rows line up with the class
    names even for classes the split lacks; where a value is 0/0 (no item true or predicted) it is 0.
    """
    scores = sk.precision_recall_fscore_support(true, predicted, labels=range(num_classes), zero_division=0)
    return dict(zip(("precision", "recall", "f1", "support"), scores, strict=True))


def confusion_matrix(true: ArrayLike, predicted: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts by (true, predicted) class index, every class a row and a column."""
    return sk.confusion_matrix(true, predicted, labels=range(num_classes))


def regression_metrics(true: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """RMSE, MAE and R2 by scikit-learn, in the units of its inputs.

    R2 with constant targets follows scikit-learn (force_finite): 1.0 for a perfect fit, else 0.0,
    rather than 1 - x/0. With under two items it is NaN, with scikit-learn's warning.
    """
    return {
        "rmse": float(sk.root_mean_squared_error(true, predicted)),
        "mae": float(sk.mean_absolute_error(true, predicted)),
        "r2": float(sk.r2_score(true, predicted)),
    }
