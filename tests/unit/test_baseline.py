"""The classical baseline beside the network: fitted on the same splits, scored with the same metrics (real data)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_diabetes

from tests.unit.test_pipeline_checks import digits_data
from trainwise.baseline import against_network, comparison, fit_baseline
from trainwise.data.loading import PreparedData
from trainwise.engine import TensorData
from trainwise.metrics import REGRESSION


def test_digits_pixels_give_a_strong_baseline_scored_like_the_network() -> None:
    data = digits_data()  # 300 training and 100 validation 8x8 digits, uint8 images
    result = fit_baseline(data)
    assert result.name == "logistic regression on 8x8 pixels per channel" and result.train_items == 300
    scores = result.metrics["val"]
    assert scores["accuracy"] > 0.85 and set(scores) == {"accuracy", "balanced_accuracy", "f1_macro", "log_loss"}
    assert 0 < scores["log_loss"] < 1


def test_a_class_missing_from_training_gets_probability_zero_not_a_shifted_column() -> None:
    """No 4 in training: scikit-learn's 9 columns are classes 0-3 and 5-9; mapped by position onto the
    10 classes they would shift 5-9 down by one, and half the validation digits would be wrong."""
    data = digits_data()
    train = data.splits["train"]
    keep = train.y != 4
    data.splits["train"] = TensorData(train.x[keep], train.y[keep])
    scores = fit_baseline(data).metrics["val"]
    fours = float((data.splits["val"].y == 4).float().mean())
    assert scores["accuracy"] <= 1 - fours + 1e-9  # every 4 is wrong
    assert scores["accuracy"] > 0.75 and np.isfinite(scores["log_loss"])  # the rest land in their own columns


def test_regression_scores_are_in_the_targets_units() -> None:
    raw = load_diabetes()
    x, y = torch.tensor(raw.data, dtype=torch.float32), raw.target
    mean, std = float(y[:300].mean()), float(y[:300].std())
    z = torch.tensor((y - mean) / std, dtype=torch.float32)
    splits = {"train": TensorData(x[:300], z[:300]), "val": TensorData(x[300:], z[300:])}
    data = PreparedData(REGRESSION, [], (10,), splits, {}, {}, target_scale=(mean, std))
    scores = fit_baseline(data).metrics["val"]
    assert 45 < scores["rmse"] < 70 and scores["r2"] > 0.3  # diabetes' target spread is 77; standardised it would be < 1


def test_the_sentence_follows_the_metrics_direction() -> None:
    assert comparison(0.975, 0.986, "accuracy", maximize=True) == "falls short of the baseline by 0.011 accuracy (0.975 vs 0.986)"
    assert comparison(0.108, 0.065, "log_loss", maximize=False).startswith("falls short of the baseline by 0.043")
    assert comparison(0.9815, 0.9815, "accuracy", maximize=True) == "ties with the baseline on accuracy (0.9815 vs 0.9815)"
    assert comparison(0.05, 0.065, "log_loss", maximize=False).startswith("beats the baseline by 0.015")
    data = digits_data()
    result = fit_baseline(data)
    finals = {"best_val_accuracy": 1.0}
    sentence = against_network(result, finals, "accuracy", maximize=True)
    assert sentence.startswith("On val, the network beats the baseline by") and sentence.endswith("logistic regression on 8x8 pixels per channel.")
