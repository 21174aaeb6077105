"""After training: predictions on a split, per-class metrics, the worst errors, and their figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from trainwise import plots
from trainwise.data.loading import PreparedData
from trainwise.engine import TensorData, Trainer
from trainwise.metrics import CLASSIFICATION, confusion_matrix, per_class_metrics


@dataclass
class Predictions:
    """One split's outputs next to its targets, in the targets' own units for regression."""

    outputs: torch.Tensor  # logits (classification) or values in target units (regression)
    targets: torch.Tensor
    metrics: dict[str, float]

    def predicted(self) -> np.ndarray:
        return self.outputs.argmax(1).numpy() if self.outputs.dim() == 2 and self.outputs.shape[1] > 1 else self.outputs.reshape(-1).numpy()


def predict_split(trainer: Trainer, data: PreparedData, split: TensorData) -> Predictions:
    metrics = trainer.evaluate(split)
    outputs = trainer.predict(split.x)
    targets = split.y
    if data.task != CLASSIFICATION:
        mean, std = data.target_scale
        outputs, targets = outputs.reshape(-1) * std + mean, split.y.float() * std + mean
    return Predictions(outputs, targets, metrics)


def per_class_table(predictions: Predictions, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, a row for every class (per_class_metrics)."""
    table = per_class_metrics(predictions.targets.numpy(), predictions.predicted(), len(classes))
    return pd.DataFrame({"class": classes, **table})


def confusion(predictions: Predictions, num_classes: int) -> np.ndarray:
    return confusion_matrix(predictions.targets.numpy(), predictions.predicted(), num_classes)


def worst_errors(predictions: Predictions, count: int = 24) -> np.ndarray:
    """Indices of the validation items the model got most confidently wrong (highest loss first)."""
    losses = torch.nn.functional.cross_entropy(predictions.outputs, predictions.targets, reduction="none")
    wrong = predictions.outputs.argmax(1) != predictions.targets
    order = torch.argsort(torch.where(wrong, losses, torch.full_like(losses, -1.0)), descending=True)
    return order[: min(count, int(wrong.sum()))].numpy()


def report_figures(data: PreparedData, predictions: Predictions, *, split: TensorData, split_name: str) -> dict[str, Figure]:
    """Confusion matrices and per-class bars (classification) or residuals (regression), plus worst errors."""
    if data.task != CLASSIFICATION:
        return {f"{split_name}_predicted_vs_true": plots.predicted_vs_true(predictions.targets.numpy(), predictions.outputs.numpy())}
    matrix = confusion(predictions, len(data.classes))
    figures = {
        f"{split_name}_confusion_matrix": plots.confusion_matrix(matrix, data.classes, normalize=False, title=f"Confusion matrix ({split_name})"),
        f"{split_name}_confusion_matrix_normalized": plots.confusion_matrix(matrix, data.classes, normalize=True, title=f"Confusion matrix ({split_name})"),
        f"{split_name}_per_class": plots.per_class_metrics(per_class_table(predictions, data.classes), data.classes),
    }
    worst = worst_errors(predictions)
    if data.is_image and len(worst):
        images = split.x[torch.as_tensor(worst)].permute(0, 2, 3, 1).numpy()
        predicted = predictions.predicted()
        labels = [f"{data.classes[int(predictions.targets[i])]} -> {data.classes[int(predicted[i])]}" for i in worst]
        figures[f"{split_name}_worst_errors"] = plots.image_batch(images, labels, title=f"Most confident mistakes ({split_name}): true -> predicted")
    return figures


def learning_curves(history: list[dict[str, float]], metric: str) -> Figure:
    epochs = [h["epoch"] for h in history]
    series = {"train loss": [h["train_loss"] for h in history], "val loss": [h.get("val_loss", float("nan")) for h in history]}
    series |= {f"train {metric}": [h.get(f"train_{metric}", float("nan")) for h in history], f"val {metric}": [h.get(f"val_{metric}", float("nan")) for h in history]}
    return plots.curves(series, x=epochs, title="Learning curves", xlabel="epoch", ylabel=f"loss / {metric}")
