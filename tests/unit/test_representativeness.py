"""Sample vs full: one drift row for a table's columns, with a textbook KS test and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from trainwise.checks.representativeness import feature_drift, representativeness

THRESHOLD = 0.2  # checks.max_property_drift's default


def noise(rows: int, columns: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, columns)), columns=[f"f{i:03d}" for i in range(columns)])
    frame["label"] = rng.choice(["a", "b", "c"], rows)
    return frame


def random_sample(full: pd.DataFrame, n: int, seed: int = 1) -> pd.DataFrame:
    return full.loc[np.sort(np.random.default_rng(seed).choice(full.index, n, replace=False))]


def check(full: pd.DataFrame, sample: pd.DataFrame, *, per_property: bool = False):
    columns = [c for c in full.columns if c != "label"]
    return representativeness(
        full, sample, label="label", properties=columns, max_label_distance=0.1, max_drift=THRESHOLD, per_property=per_property
    )


def test_a_biased_column_is_named_first_and_fails_the_one_drift_row() -> None:
    full = noise(990, 192)
    # a sampler bug: rows are taken only above f042's 30th percentile, so the sample's ECDF starts
    # at 0 where the full data's is 0.3
    biased = full[full["f042"] > full["f042"].quantile(0.3)]
    report = check(full, random_sample(biased, 200))
    names = [r.name for r in report.checks]
    assert names == ["sample_label_distribution", "sample_drift_features"]
    row = report.checks[1]
    assert not row.passed and 0.28 < row.value <= 0.31 and row.threshold == THRESHOLD
    assert "1 of them over the threshold (f042)" in row.meaning and "largest gaps of all: f042 (KS 0.30" in row.meaning
    assert row.extra["columns"] == 192 and row.extra["drifted"] == 1
    assert report.drift.loc[report.drift["drifted"], "property"].tolist() == ["f042"]
    assert report.drift["property"].iloc[0] == "f042" and len(report.drift) == 192
    assert row.figure is not None and "1 column drifts" in row.figure.get_suptitle()


def test_chance_gaps_over_192_columns_do_not_fail_a_small_sample() -> None:
    # 25 random rows: each column's KS statistic passes 0.2 about a quarter of the time by chance
    # alone, so a per-column rule fails nearly every wide table; none of the gaps is significant
    full = noise(990, 192)
    report = check(full, random_sample(full, 25))
    drift = report.drift
    assert (drift["statistic"] > THRESHOLD).sum() >= 10
    assert (drift["q_value"] >= 0.05).all()
    row = report.checks[-1]
    assert row.name == "sample_drift_features" and row.passed and row.value == 0.0
    assert row.extra["largest_statistic"] == drift["statistic"].max() > THRESHOLD


def test_the_p_value_tests_the_sample_against_the_rest_of_the_data() -> None:
    # ks_2samp assumes independent samples; the sample is part of the full data, so p comes from
    # sample vs rest, whose statistic is the sample-vs-full one scaled by n_full / n_rest
    full = noise(300, 1)
    sample = random_sample(full, 60)
    rest = full.drop(index=sample.index)
    row = feature_drift(full, sample, ["f000"]).iloc[0]
    against_rest = ks_2samp(sample["f000"], rest["f000"])
    assert np.isclose(row["statistic"], ks_2samp(sample["f000"], full["f000"]).statistic)
    assert np.isclose(row["statistic"] * 300 / 240, against_rest.statistic)
    assert np.isclose(row["p_value"], against_rest.pvalue) and row["q_value"] == row["p_value"]  # one column: no adjustment


def test_a_narrow_table_shows_every_column_in_its_one_figure() -> None:
    full = noise(200, 4)
    report = check(full, random_sample(full, 50))
    assert [r.name for r in report.checks] == ["sample_label_distribution", "sample_drift_features"]
    labels = [t.get_text() for t in report.checks[1].figure.axes[0].get_yticklabels()]
    assert sorted(labels) == ["f000", "f001", "f002", "f003"]


def test_images_keep_one_row_per_property_in_their_order() -> None:
    full = noise(200, 3).rename(columns={"f000": "width", "f001": "height", "f002": "brightness"})
    report = check(full, random_sample(full, 50), per_property=True)
    assert [r.name for r in report.checks] == [
        "sample_label_distribution", "sample_drift_width", "sample_drift_height", "sample_drift_brightness",
    ]  # fmt: skip
    assert len(report.drift) == 3


def test_a_sample_of_everything_and_an_empty_column_compare_cleanly() -> None:
    full = noise(50, 2)
    full["empty"] = np.nan
    full["words"] = "x"
    report = check(full, full)
    assert report.drift["property"].tolist() == ["f000", "f001"]  # the empty and the text column are not KS-tested
    assert (report.drift["statistic"] == 0).all() and (report.drift["p_value"] == 1).all()
    assert report.checks[-1].passed
