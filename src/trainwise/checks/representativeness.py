"""Is the sample a fair miniature of the full data? Label shares and per-property distributions."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from trainwise import plots
from trainwise.checks import CheckResult


def total_variation(full: Mapping[str, int], sample: Mapping[str, int]) -> float:
    """Half the L1 distance between the two label distributions: 0 identical, 1 disjoint."""
    labels = sorted(set(full) | set(sample))
    p = np.array([full.get(k, 0) for k in labels], dtype=float)
    q = np.array([sample.get(k, 0) for k in labels], dtype=float)
    return float(0.5 * np.abs(p / max(p.sum(), 1) - q / max(q.sum(), 1)).sum())


def label_check(full: pd.Series, sample: pd.Series, max_distance: float) -> CheckResult:
    full_counts = full.astype(str).value_counts().to_dict()
    sample_counts = sample.astype(str).value_counts().to_dict()
    distance = total_variation(full_counts, sample_counts)
    missing = sorted(set(full_counts) - set(sample_counts))
    return CheckResult(
        name="sample_label_distribution",
        passed=distance <= max_distance and not missing,
        value=distance,
        threshold=max_distance,
        meaning="total variation distance between the label shares of the sample and of the full data"
        + (f"; classes missing from the sample: {', '.join(missing)}" if missing else ""),
        advice="draw a larger sample (sample.size or sample.fraction) so every class keeps its share",
        figure=plots.label_distribution_comparison(full_counts, sample_counts),
    )


def property_check(name: str, full: pd.Series, sample: pd.Series, max_statistic: float) -> CheckResult:
    full_values, sample_values = full.dropna().to_numpy(float), sample.dropna().to_numpy(float)
    statistic = float(ks_2samp(full_values, sample_values).statistic) if len(full_values) and len(sample_values) else 0.0
    return CheckResult(
        name=f"sample_drift_{name}",
        passed=statistic <= max_statistic,
        value=statistic,
        threshold=max_statistic,
        meaning=f"Kolmogorov-Smirnov statistic between the sample's and the full data's {name}",
        advice="a larger sample, or check that the sample is drawn from the same files as the full data",
        figure=plots.distribution_comparison(full_values, sample_values, name, statistic),
    )


def representativeness(
    full: pd.DataFrame, sample: pd.DataFrame, *, label: str, properties: list[str], max_label_distance: float, max_drift: float
) -> list[CheckResult]:
    """Label shares, then each numeric property; `label=''` skips the label check (regression targets are a property)."""
    results = [label_check(full[label], sample[label], max_label_distance)] if label else []
    for column in properties:
        if column in full and pd.api.types.is_numeric_dtype(full[column]) and full[column].notna().any():
            results.append(property_check(column, full[column], sample[column], max_drift))
    return results
