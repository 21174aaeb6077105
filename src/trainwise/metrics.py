"""Metrics accumulated on the device during an epoch and read once at its end.

Reading a metric (`.item()`) forces the host to wait for the device: one sync per batch per metric
costs real time on a GPU. So batches add into tensors (a confusion matrix, sums of errors) and the
host reads them once per epoch.
"""

from __future__ import annotations

import math

import torch

CLASSIFICATION = "classification"
REGRESSION = "regression"


class MetricAccumulator:
    """Loss and task metrics over one pass; `update` per batch, `compute` once."""

    def __init__(self, task: str, num_classes: int, device: torch.device, target_scale: tuple[float, float] = (0.0, 1.0)) -> None:
        self.task = task
        self.num_classes = num_classes
        self.device = device
        self.mean, self.std = target_scale  # regression targets are trained standardised; metrics in their units
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        if task == CLASSIFICATION:
            self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
            self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        else:
            self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # sq err, abs err, y, y^2, n

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        n = targets.shape[0]
        self.loss_sum += loss.detach().double() * n
        self.count += n
        if self.task == CLASSIFICATION:
            predicted = outputs.argmax(dim=1)
            self.confusion += torch.bincount(targets * self.num_classes + predicted, minlength=self.num_classes**2)
            # log loss without label smoothing, whatever the training loss uses
            self.nll_sum += torch.nn.functional.cross_entropy(outputs.float(), targets, reduction="sum").double()
        else:
            predicted = outputs.reshape(-1).double() * self.std + self.mean
            actual = targets.reshape(-1).double() * self.std + self.mean
            error = predicted - actual
            self.sums += torch.stack([(error**2).sum(), error.abs().sum(), actual.sum(), (actual**2).sum(), actual.new_tensor(n)])

    def compute(self) -> dict[str, float]:
        """All metrics as floats (this is the sync point)."""
        count = max(float(self.count.item()), 1.0)
        result = {"loss": float(self.loss_sum.item()) / count}
        if self.task == CLASSIFICATION:
            matrix = self.confusion.view(self.num_classes, self.num_classes).double().cpu()
            result.update(classification_metrics(matrix))
            result["log_loss"] = float(self.nll_sum.item()) / count
        else:
            sq, ab, s, s2, n = (float(v) for v in self.sums.cpu())
            n = max(n, 1.0)
            variance = s2 / n - (s / n) ** 2
            result.update({"rmse": math.sqrt(sq / n), "mae": ab / n, "r2": 1.0 - (sq / n) / variance if variance > 0 else 0.0})
        return result

    def confusion_matrix(self) -> torch.Tensor:
        return self.confusion.view(self.num_classes, self.num_classes).cpu()


def classification_metrics(matrix: torch.Tensor) -> dict[str, float]:
    """accuracy, balanced accuracy and macro F1 from a (true, predicted) confusion matrix."""
    total = matrix.sum().clamp(min=1)
    correct = matrix.diag()
    support = matrix.sum(dim=1)
    predicted = matrix.sum(dim=0)
    present = support > 0
    recall = torch.where(present, correct / support.clamp(min=1), torch.zeros_like(correct))
    precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), torch.zeros_like(correct))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(correct))
    return {
        "accuracy": float(correct.sum() / total),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
    }
