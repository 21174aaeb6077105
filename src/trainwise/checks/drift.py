"""Is the test (submission) set drawn like the training data? Per-property drift and a domain classifier.

Two rows, as Deepchecks' train-test drift checks do it:
- property drift: the Kolmogorov-Smirnov statistic of each property (image brightness, contrast,
  colour, size, aspect, sharpness, format; a table's features) between the training split and the
  test set; one row for all of them, failing when a property's gap is both large and unlikely to be
  chance (Benjamini-Hochberg over the properties, as for the sample's drift of a wide table);
- a domain classifier: gradient-boosted trees, cross-validated, told to tell training items from
  test items by the same columns; its ROC AUC is 0.5 when nothing tells them apart, and it catches
  shifts no single column shows (a combination of columns).
A model scored on a drifted test set, or submitting predictions for one, is judged on data it never
learned from: colour-inverted test images, or test photos of another size or format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, ks_2samp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from trainwise import plots
from trainwise.checks import CheckResult
from trainwise.checks.representativeness import FALSE_DISCOVERY_RATE, WORST_LISTED, drift_summary

MAX_ITEMS = 5000  # per side for the domain classifier: its AUC is as sure on 5,000 as on 70,000
FOLDS = 5


@dataclass
class TrainTestDrift:
    checks: list[CheckResult]
    drift: pd.DataFrame  # property, statistic, p_value, q_value, drifted, train_n, test_n; worst first


def property_drift(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Per column: the KS statistic between the two (independent) sets, its p-value and BH q-value."""
    rows = []
    for column in train.columns:
        a, b = train[column].dropna().to_numpy(float), test[column].dropna().to_numpy(float)
        if not len(a) or not len(b):
            continue
        result = ks_2samp(a, b)
        rows.append({"property": str(column), "statistic": float(result.statistic), "p_value": float(result.pvalue),
                     "train_n": len(a), "test_n": len(b)})  # fmt: skip
    table = pd.DataFrame(rows, columns=["property", "statistic", "p_value", "train_n", "test_n"])
    table.insert(3, "q_value", false_discovery_control(table["p_value"], method="bh") if len(table) else [])
    return table.sort_values(["statistic", "p_value"], ascending=[False, True], kind="stable", ignore_index=True)


def domain_auc(train: pd.DataFrame, test: pd.DataFrame, *, seed: int) -> float:
    """Cross-validated ROC AUC of a classifier telling training rows (0) from test rows (1)."""
    rng = np.random.default_rng(seed)
    a = train.iloc[rng.permutation(len(train))[:MAX_ITEMS]]
    b = test.iloc[rng.permutation(len(test))[:MAX_ITEMS]]
    x = pd.concat([a, b], ignore_index=True).to_numpy(float)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = min(FOLDS, len(a), len(b))
    if folds < 2:
        return 0.5  # one item on a side: nothing to cross-validate
    model = HistGradientBoostingClassifier(max_iter=100, max_depth=3, random_state=seed)
    # one OpenMP thread: on 2 busy cores the trees' threads wait on each other (1,800 items: 11 s, not 0.7 s)
    with threadpool_limits(1):
        scores = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba")
    return float(roc_auc_score(y, scores[:, 1]))


def train_test_drift_checks(
    train: pd.DataFrame, test: pd.DataFrame, *, kind: str, max_statistic: float, max_auc: float, seed: int
) -> TrainTestDrift:
    """The property-drift and domain-classifier rows; `kind` names the columns ('image properties', 'features')."""
    drift = property_drift(train, test)
    _, drifted, value = drift_summary(drift, max_statistic)
    drift["drifted"] = drift.index.isin(drifted.index)
    worst = ", ".join(f"{r.property} (KS {r.statistic:.3f}, q {r.q_value:.2g})" for r in drift.head(WORST_LISTED).itertuples())
    rows = [
        CheckResult(
            name="test_property_drift",
            passed=drifted.empty,
            value=value,
            threshold=max_statistic,
            meaning=(
                f"largest Kolmogorov-Smirnov statistic, training split vs the {len(test)} provided test items, among the "
                f"{kind} whose gap is significant (Benjamini-Hochberg q < {FALSE_DISCOVERY_RATE:g} over {len(drift)}): "
                f"{len(drifted)} drifted"
                + (f" ({', '.join(drifted['property'].head(WORST_LISTED))})" if len(drifted) else "")
                + f"; largest gaps: {worst or 'none'}"
            ),
            advice=(
                "the test items differ from the training data in these properties (another camera, size, format, colour "
                "handling or time): predictions on them are extrapolations; make the training data cover them, or fix how the "
                "test files were produced; every property's statistic is in checks/test_drift.csv"
            ),
            figure=plots.feature_drift(
                drift, max_statistic, fdr=FALSE_DISCOVERY_RATE, title="Training vs test: KS statistic per property",
                xlabel="Kolmogorov-Smirnov statistic (training split vs test set)",
            ),
            extra={"test_drift.properties": float(len(drift)), "test_drift.drifted": float(len(drifted))},
        )
    ]
    auc = domain_auc(train, test, seed=seed) if len(drift) else 0.5
    rows.append(
        CheckResult(
            name="test_domain_classifier_auc",
            passed=auc <= max_auc,
            value=auc,
            threshold=max_auc,
            meaning=(
                f"ROC AUC of gradient-boosted trees telling training items from test items by their {kind} "
                f"({FOLDS}-fold cross-validated; 0.5: indistinguishable, 1: fully separable)"
            ),
            advice=(
                "the test set is drawn unlike the training data; the property-drift row and checks/test_drift.csv name "
                "the properties that differ most"
            ),
        )
    )
    return TrainTestDrift(rows, drift)
