"""Parity with scikit-learn: the metrics the engine reports, and the evaluation tables, on edge cases.

Every value here comes out of trainwise's own path (Trainer.evaluate, in batches, or the evaluation
tables) and is compared with scikit-learn on the same predictions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk
from torch import nn

from trainwise.config.sections import CLASSIFICATION_METRICS, REGRESSION_METRICS
from trainwise.engine import EngineConfig, TensorData, Trainer
from trainwise.evaluation import Predictions, confusion, per_class_table
from trainwise.metrics import CLASSIFICATION, CLASSIFICATION_NAMES, REGRESSION, REGRESSION_NAMES, MetricAccumulator

# Warnings are errors: an epoch whose model predicts a class the split lacks, or a split of one
# class, is ordinary and must not warn from the engine's metrics.
pytestmark = pytest.mark.filterwarnings("error")


class FixedOutputs(nn.Module):
    """A "model" whose outputs are its inputs, so a test chooses the logits the engine sees."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # the optimiser needs a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def engine_metrics(
    outputs: np.ndarray, targets: np.ndarray, *, task: str = CLASSIFICATION, target_scale: tuple[float, float] = (0.0, 1.0)
) -> dict[str, float]:
    """What Trainer.evaluate reports for these outputs, in batches of 3 so the accumulation is tested too."""
    num_outputs = outputs.shape[1] if task == CLASSIFICATION else 1
    config = EngineConfig(task=task, num_outputs=num_outputs, device="cpu", precision="fp32", target_scale=target_scale)
    y = torch.as_tensor(targets, dtype=torch.long if task == CLASSIFICATION else torch.float32)
    return Trainer(FixedOutputs(), config).evaluate(TensorData(torch.as_tensor(outputs, dtype=torch.float32), y), batch_size=3)


def logits_for(predicted: list[int], num_classes: int) -> np.ndarray:
    """Logits whose argmax is `predicted`, not so sharp that log loss is trivial."""
    logits = np.zeros((len(predicted), num_classes), dtype=np.float32)
    logits[np.arange(len(predicted)), predicted] = 2.0
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def assert_classification_parity(targets: list[int] | np.ndarray, logits: np.ndarray) -> dict[str, float]:
    got = engine_metrics(logits, np.asarray(targets))
    predicted = logits.argmax(axis=1)  # numpy and torch both take the first of tied maxima
    with warnings.catch_warnings():
        # scikit-learn itself warns on these edge cases (one label; y_pred has classes y_true lacks)
        warnings.simplefilter("ignore", UserWarning)
        expected = {
            "accuracy": sk.accuracy_score(targets, predicted),
            "balanced_accuracy": sk.balanced_accuracy_score(targets, predicted),
            "f1_macro": sk.f1_score(targets, predicted, average="macro", zero_division=0),
            "log_loss": sk.log_loss(targets, softmax(logits), labels=list(range(logits.shape[1]))),
        }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    return got


def test_macro_f1_counts_a_class_predicted_but_never_true() -> None:
    # Class 2 is predicted once and never occurs: its F1 is 0 and it counts in the macro average.
    got = assert_classification_parity([0, 0, 1, 1], logits_for([0, 2, 1, 1], 3))
    assert got["f1_macro"] == pytest.approx(5 / 9)  # (2/3 + 1 + 0) / 3; averaging over true classes only gives 5/6
    assert got["balanced_accuracy"] == pytest.approx(0.75)  # recall over the classes that occur


def test_classes_absent_from_both_targets_and_predictions_do_not_count() -> None:
    rng = np.random.default_rng(0)
    targets = rng.choice([0, 1, 4], size=40)  # classes 2, 3 and 5 of 6 never occur
    predicted = np.where(rng.random(40) < 0.7, targets, rng.choice([0, 1, 3], size=40))  # 3 is predicted, never true
    logits = logits_for(list(predicted), 6) + rng.normal(0, 0.5, (40, 6)).astype(np.float32)
    assert_classification_parity(targets, logits)


def test_one_class_all_right_and_with_a_class_predicted_but_never_true() -> None:
    got = assert_classification_parity([1] * 7, logits_for([1] * 7, 3))
    assert got["accuracy"] == got["balanced_accuracy"] == got["f1_macro"] == 1.0
    got = assert_classification_parity([0] * 10, logits_for([0] * 8 + [1] * 2, 2))
    assert got["f1_macro"] == pytest.approx((2 * 0.8 / 1.8 + 0) / 2)  # class 1's F1 of 0 counts


def test_ties_in_argmax_take_the_first_class() -> None:
    logits = np.array([[1, 1, 0], [0, 2, 2], [3, 3, 3], [0, 0, 1], [5, 1, 5]], dtype=np.float32)
    got = assert_classification_parity([0, 2, 1, 2, 0], logits)
    assert got["accuracy"] == pytest.approx(3 / 5)  # rows 0 and 4 are right only because a tie goes to class 0


def test_log_loss_matches_scikit_learn_on_random_logits() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (50, 10)).astype(np.float32)
    assert_classification_parity(rng.integers(0, 10, 50), logits)


def _regression_parity(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    mean, std = 150.0, 77.0  # targets are trained standardised; metrics come back in target units
    got = engine_metrics(((predicted - mean) / std)[:, None], (actual - mean) / std, task=REGRESSION, target_scale=(mean, std))
    assert got["rmse"] == pytest.approx(sk.root_mean_squared_error(actual, predicted), rel=1e-5)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(actual, predicted), rel=1e-5)
    assert got["r2"] == pytest.approx(sk.r2_score(actual, predicted), abs=1e-5)
    return got


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    actual = rng.normal(150, 77, 31)
    _regression_parity(actual, actual + rng.normal(0, 40, 31))


def test_r2_with_constant_targets_follows_scikit_learn() -> None:
    # scikit-learn's convention (force_finite): 1 for a perfect fit, 0 otherwise, never -inf or NaN.
    constant = np.full(9, 120.0)
    assert _regression_parity(constant, constant.copy())["r2"] == 1.0
    assert _regression_parity(constant, constant + np.linspace(-5, 5, 9))["r2"] == 0.0


def test_per_class_table_matches_scikit_learn_with_absent_and_never_true_classes() -> None:
    targets = np.array([0, 0, 1, 1, 1, 3, 3])  # class 2 never occurs; 4 occurs nowhere
    predicted = [0, 1, 1, 1, 2, 3, 0]  # class 2 predicted once, never true
    predictions = Predictions(torch.from_numpy(logits_for(predicted, 5)), torch.from_numpy(targets), {})
    classes = ["a", "b", "c", "d", "e"]
    table = per_class_table(predictions, classes)
    precision, recall, f1, support = sk.precision_recall_fscore_support(targets, predicted, labels=range(5), zero_division=0)
    expected = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    np.testing.assert_array_equal(confusion(predictions, 5), sk.confusion_matrix(targets, predicted, labels=range(5)))


def test_the_metric_names_are_those_the_config_accepts() -> None:
    assert set(CLASSIFICATION_NAMES) == set(CLASSIFICATION_METRICS) and set(REGRESSION_NAMES) == set(REGRESSION_METRICS)


@pytest.mark.parametrize(("task", "names"), [(CLASSIFICATION, CLASSIFICATION_NAMES), (REGRESSION, REGRESSION_NAMES)])
def test_an_empty_pass_has_undefined_metrics(task: str, names: tuple[str, ...]) -> None:
    result = MetricAccumulator(task, 3, torch.device("cpu")).compute()
    assert set(result) == {"loss", *names} and all(np.isnan(v) for v in result.values())
