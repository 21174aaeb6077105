"""Sample vs full: does the full run behave the way the sample run predicted?

The sample is where the pipeline was checked; these rows say whether the full data confirms it:
the loss at init agrees, more data narrows the train-validation gap and improves validation, and
the full run's error lands where a power law fitted to smaller training sets says it should.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainwise import plots
from trainwise.checks import CheckResult


@dataclass
class RunSummary:
    """What the comparison needs of one training run."""

    items: int  # training items
    init_loss: float
    train_score: float  # the selection metric on train and validation at the best epoch
    val_score: float


def error_of(score: float, metric: str) -> float:
    """The selection metric as an error (lower is better, positive) for the learning curve."""
    return 1.0 - score if metric in ("accuracy", "balanced_accuracy", "f1_macro", "r2") else score


def sample_vs_full(
    sample: RunSummary, full: RunSummary, curve: Sequence[tuple[int, float]], *, metric: str, maximize: bool, init_tolerance: float,
    curve_note: str = "",
) -> list[CheckResult]:
    sign = 1.0 if maximize else -1.0
    init_gap = abs(sample.init_loss - full.init_loss) / max(abs(full.init_loss), 1e-12)
    sample_gap = sign * (sample.train_score - sample.val_score)
    full_gap = sign * (full.train_score - full.val_score)
    improvement = sign * (full.val_score - sample.val_score)
    results = [
        CheckResult(
            "init_loss_sample_vs_full", init_gap <= init_tolerance, init_gap, init_tolerance,
            f"relative difference of the loss at initialisation: sample {sample.init_loss:.4f}, full {full.init_loss:.4f}",
            "the sample and the full data are prepared differently (normalisation, labels): compare their prepare outputs",
        ),
        CheckResult(
            "generalization_gap_shrinks", full_gap <= sample_gap, full_gap, sample_gap,
            f"train-validation gap of {metric} on the full data (threshold: the sample's gap)",
            "more data should overfit less: look for duplicates or leakage that differ between the two",
        ),
        CheckResult(
            "full_beats_sample", improvement >= 0, improvement, 0.0,
            f"validation {metric} of the full run minus the sample run's ({full.val_score:.4g} vs {sample.val_score:.4g})",
            "more data did not help: the model may be capacity-limited, or the full data noisier than the sample",
        ),
    ]  # fmt: skip
    results.append(learning_curve_check(curve, (full.items, error_of(full.val_score, metric)), metric=metric, note=curve_note))
    return results


def fit_power_law(points: Sequence[tuple[int, float]]) -> tuple[float, float, float] | None:
    """error = a * n^-b by least squares in log-log; returns (a, b, residual std in log space)."""
    usable = [(n, e) for n, e in points if n > 0 and e > 0]
    if len(usable) < 2:
        return None
    x = np.log([n for n, _ in usable])
    y = np.log([e for _, e in usable])
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.std(y - (slope * x + intercept))) if len(usable) > 2 else 0.0
    return math.exp(intercept), -slope, residual


def learning_curve_check(points: Sequence[tuple[int, float]], full: tuple[int, float], *, metric: str, note: str = "") -> CheckResult:
    """`note`: how the points were made (their cost, shares left out), appended to the row's meaning."""
    fitted = fit_power_law(points)
    name = "learning_curve_extrapolation"
    suffix = f" ({note})" if note else ""
    if fitted is None:
        return CheckResult(name, True, 0.0, 0.0, f"skipped: fewer than two learning-curve points with a positive error{suffix}", "")
    a, b, spread = fitted
    predicted = a * full[0] ** (-b)
    band = max(1.5, math.exp(2 * spread))  # x/÷ 1.5 at least: 3 small runs give a rough curve
    ratio = full[1] / predicted if predicted > 0 else math.inf
    inside = 1 / band <= ratio <= band
    figure = plots.learning_curve([n for n, _ in points], [e for _, e in points], (a, b), band, full, metric=f"error ({metric})")
    return CheckResult(
        name, inside, ratio, band,
        f"full run's validation error over the power law's prediction ({full[1]:.4g} vs {predicted:.4g}, fit {a:.3g} n^-{b:.3g}); "
        f"inside means within x/÷ {band:.2f}{suffix}",
        "far below: suspect leakage in the full data; far above: the full run trained worse than smaller ones (schedule, epochs)",
        figure,
    )  # fmt: skip
