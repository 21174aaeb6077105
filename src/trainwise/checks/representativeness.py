"""Is the sample a fair miniature of the full data? Label shares and per-property distributions.

Images have a handful of properties (sizes, brightness, channel means): one row each. A table may
have hundreds of numeric columns: one row for all of them, naming the worst, with the per-column
statistics as a table beside it, so a 192-column table neither fills the report with 192 rows nor
fails on the largest of 192 chance gaps (see `feature_drift`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, ks_2samp

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


WORST_LISTED = 5  # columns named in the drift row's text; all of them are in its table
FALSE_DISCOVERY_RATE = 0.05  # Benjamini-Hochberg level over a table's columns


@dataclass
class Representativeness:
    """The check rows, and the per-property KS table behind the drift row(s), worst first."""

    checks: list[CheckResult]
    drift: pd.DataFrame  # property, statistic, p_value, q_value, drifted, full_n, sample_n


def feature_drift(full: pd.DataFrame, sample: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per numeric column: the KS statistic between the sample and the full data, and its p-value.

    `sample` is a subset of `full` (its index labels are its rows' labels in `full`). The
    statistic compares the sample with the full data, as the drift threshold always has. The
    p-value cannot come from that comparison: ks_2samp assumes two independent samples, and the
    sample is part of the full data. It comes from the sample against the rest of the full data
    instead, which tests the same gap: the full ECDF is the size-weighted mix of the two, so
    D(sample, full) = (n_rest / n_full) * D(sample, rest). The q-value is the p-value adjusted for
    testing every column at once (Benjamini-Hochberg): with 192 columns about 10 would pass p < 0.05
    by chance alone.
    """
    rest = full.loc[~full.index.isin(sample.index)]
    rows = []
    for column in columns:
        if column not in full or not pd.api.types.is_numeric_dtype(full[column]) or full[column].notna().sum() == 0:
            continue  # nothing to compare; categorical columns are outside a KS test
        f, s, r = (frame[column].dropna().to_numpy(float) for frame in (full, sample, rest))
        statistic = float(ks_2samp(s, f).statistic) if len(s) else 0.0
        p_value = float(ks_2samp(s, r).pvalue) if len(s) and len(r) else 1.0  # the sample is all of it: no gap
        rows.append({"property": str(column), "statistic": statistic, "p_value": p_value, "full_n": len(f), "sample_n": len(s)})
    table = pd.DataFrame(rows, columns=["property", "statistic", "p_value", "full_n", "sample_n"])
    table.insert(3, "q_value", false_discovery_control(table["p_value"], method="bh") if len(table) else [])
    return table.sort_values(["statistic", "p_value"], ascending=[False, True], kind="stable", ignore_index=True)


def drift_summary(drift: pd.DataFrame, max_statistic: float, *, fdr: float = FALSE_DISCOVERY_RATE) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """The columns whose gap is significant (q-value under `fdr`), those of them over `max_statistic`
    (drifted), and the row's value: the largest significant statistic, 0 when none is."""
    significant = drift[drift["q_value"] < fdr]
    value = float(significant["statistic"].max()) if len(significant) else 0.0
    return significant, significant[significant["statistic"] > max_statistic], value


def feature_drift_check(drift: pd.DataFrame, max_statistic: float, *, fdr: float = FALSE_DISCOVERY_RATE) -> CheckResult:
    """One row for every column of a table: it fails when some column's KS statistic is over
    `max_statistic` and its gap is unlikely to be chance (q-value under `fdr`).

    Both, because either alone misleads on a wide table: the largest of 192 chance KS statistics
    routinely passes a threshold that one column's rarely does, and a significant gap can be too
    small to matter. The value is the largest statistic among the significant columns (0 when
    none is), so value <= threshold exactly when the row passes, as for every other row.
    """
    significant, drifted, value = drift_summary(drift, max_statistic, fdr=fdr)
    worst = ", ".join(
        f"{r.property} (KS {r.statistic:.3f}, p {r.p_value:.2g}, q {r.q_value:.2g})"
        for r in drift.head(WORST_LISTED).itertuples()
    )
    meaning = (
        f"largest Kolmogorov-Smirnov statistic (sample vs full) among the columns whose gap is significant "
        f"(Benjamini-Hochberg q < {fdr:g} over {len(drift)} numeric columns; "
        f"p from the sample against the rest of the full data): "
        f"{len(significant)} significant, {len(drifted)} of them over the threshold"
        f"{' (' + ', '.join(drifted['property'].head(WORST_LISTED)) + ')' if len(drifted) else ''}; largest gaps of all: {worst}"
    )
    return CheckResult(
        name="sample_drift_features",
        passed=drifted.empty,
        value=value,
        threshold=max_statistic,
        meaning=meaning,
        advice="a larger sample (sample.size or sample.fraction), or check that the sample is drawn at random from the "
        "training rows; every column's statistic is in checks/sample_drift.csv",
        figure=plots.feature_drift(drift, max_statistic, fdr=fdr),
        extra={
            "columns": float(len(drift)),
            "significant": float(len(significant)),
            "drifted": float(len(drifted)),
            "largest_statistic": float(drift["statistic"].max()) if len(drift) else 0.0,
        },
    )


def representativeness(
    full: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    label: str,
    properties: list[str],
    max_label_distance: float,
    max_drift: float,
    per_property: bool,
) -> Representativeness:
    """Label shares, then the numeric properties: a row each (`per_property`, images) or one row for
    all of them (tables). `label=''` skips the label check (regression targets are a property)."""
    results = [label_check(full[label], sample[label], max_label_distance)] if label else []
    drift = feature_drift(full, sample, properties)
    over = drift["statistic"] > max_drift
    if per_property:
        compared = set(drift["property"])
        results += [property_check(name, full[name], sample[name], max_drift) for name in properties if name in compared]
        drift["drifted"] = over  # each row's own rule: the statistic alone
    else:
        drift["drifted"] = over & (drift["q_value"] < FALSE_DISCOVERY_RATE)
        if len(drift):
            results.append(feature_drift_check(drift, max_drift))
    return Representativeness(results, drift)
