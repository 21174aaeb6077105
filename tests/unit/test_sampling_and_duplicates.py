"""Stratified samples, group-aware splits and table findings (near duplicates: test_near_duplicates.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainwise.checks.representativeness import total_variation
from trainwise.config import SplitConfig
from trainwise.data.records import VAL
from trainwise.data.sampling import MIN_PER_CLASS, group_split, strata, stratified_sample
from trainwise.data.splitting import full_splits
from trainwise.data.table_quality import table_findings


def labels(counts: dict[str, int]) -> pd.Series:
    return pd.Series([k for k, n in counts.items() for _ in range(n)])


def test_sample_keeps_every_class_and_its_share() -> None:
    pool = labels({"a": 600, "b": 300, "c": 100})
    chosen, notes = stratified_sample(pool, size=200, fraction=None, seed=0)
    counts = pool[chosen].value_counts().to_dict()
    assert len(chosen) == 200 and counts == {"a": 120, "b": 60, "c": 20}
    assert notes == []
    again, _ = stratified_sample(pool, size=200, fraction=None, seed=0)
    assert list(again) == list(chosen)
    other, _ = stratified_sample(pool, size=200, fraction=None, seed=1)
    assert list(other) != list(chosen)


def test_a_class_smaller_than_the_floor_is_taken_whole_and_noted() -> None:
    pool = labels({"big": 1000, "rare": 3})
    chosen, notes = stratified_sample(pool, size=50, fraction=None, seed=0)
    assert pool[chosen].value_counts()["rare"] == 3
    assert len(notes) == 1 and "'rare' has 3 items" in notes[0] and "taken whole" in notes[0]
    tiny_share = labels({"big": 1000, "small": 40})
    chosen, _ = stratified_sample(tiny_share, size=20, fraction=None, seed=0)
    assert tiny_share[chosen].value_counts()["small"] == MIN_PER_CLASS  # the floor, above its 1% share


def test_fraction_and_regression_strata() -> None:
    values = pd.Series(np.linspace(0, 100, 400))
    groups = strata(values, classification=False)
    assert groups.nunique() == 10
    chosen, _ = stratified_sample(groups, size=None, fraction=0.25, seed=0)
    assert len(chosen) == 100
    assert abs(values[chosen].mean() - values.mean()) < 3


def test_group_split_never_separates_a_group_and_keeps_fractions() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    kinds = pd.Series(rng.choice(["x", "y"], size=n, p=[0.7, 0.3]))
    groups = pd.Series(np.arange(n))
    groups[10:20] = 10  # one group of ten duplicates
    groups[500:503] = 500
    split = group_split(kinds, groups, {"test": 0.15, "val": 0.15}, seed=3)
    assert split[10:20].nunique() == 1 and split[500:503].nunique() == 1
    shares = split.value_counts(normalize=True)
    assert abs(shares["val"] - 0.15) < 0.02 and abs(shares["test"] - 0.15) < 0.02
    by_kind = pd.crosstab(kinds, split, normalize="index")
    assert (abs(by_kind["val"] - 0.15) < 0.03).all()  # stratified
    assert group_split(kinds, groups, {"test": 0.15, "val": 0.15}, seed=3).equals(split)


def test_total_variation() -> None:
    assert total_variation({"a": 5, "b": 5}, {"a": 1, "b": 1}) == 0
    assert total_variation({"a": 1}, {"b": 1}) == 1
    assert total_variation({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


def test_table_findings_name_their_columns() -> None:
    frame = pd.DataFrame(
        {
            "row_id": np.arange(40),
            "const": 7,
            "mixed": ["1", "2", "3", "n/a"] * 10,
            "x": np.tile(np.arange(10), 4) % 5,
            "y": ["a", "b"] * 20,
        }
    )
    frame.loc[39, "y"] = "b" if frame.loc[39, "y"] == "a" else "a"  # a conflicting duplicate of row 29
    frame.loc[[29, 39], ["row_id", "mixed"]] = [[29, "5"], [29, "5"]]
    found = {(f.check, f.column) for f in table_findings(frame, "y", classification=True)}
    assert ("constant_column", "const") in found
    assert ("mixed_types", "mixed") in found
    assert ("identifier_like", "row_id") not in found  # 29 repeats, so not unique
    assert ("conflicting_labels", "y") in found
    unique_ids = frame.assign(row_id=np.arange(40))
    assert ("identifier_like", "row_id") in {(f.check, f.column) for f in table_findings(unique_ids, "y", classification=True)}


def test_duplicate_rows_are_found_under_different_ids() -> None:
    frame = pd.DataFrame({"row_id": range(30), "x": np.arange(30) * 0.5, "y": ["a", "b", "c"] * 10})
    assert "duplicate_rows" not in {f.check for f in table_findings(frame, "y", classification=True)}
    # Row 7 again under a new id: a duplicate all the same (an id says nothing about content).
    repeated = pd.concat([frame, frame.iloc[[7]].assign(row_id=30)], ignore_index=True)
    details = {f.check: f.detail for f in table_findings(repeated, "y", classification=True)}
    assert details["duplicate_rows"] == "1 rows repeat an earlier row exactly (apart from row_id)"
    assert "conflicting_labels" not in details
    repeated.loc[30, "y"] = "c"  # same features, another label (row 7 is a "b")
    details = {f.check: f.detail for f in table_findings(repeated, "y", classification=True)}
    assert "duplicate_rows" not in details and "1 groups" in details["conflicting_labels"]


def test_regression_target_must_be_numeric() -> None:
    frame = pd.DataFrame({"x": range(30), "y": ["high", "low"] * 15})
    assert ("non_numeric_target", "y") in {(f.check, f.column) for f in table_findings(frame, "y", classification=False)}


@pytest.mark.parametrize("test_provided", [False, True])
def test_a_provided_validation_folder_is_the_validation_split(test_provided: bool) -> None:
    rng = np.random.default_rng(0)
    pool = pd.DataFrame({"id": [f"i{n}" for n in range(300)], "label": rng.choice(["a", "b", "c"], 300)})
    given = pd.Series([VAL if n < 60 else None for n in range(300)], index=pool.index)
    split = SplitConfig(val=0.2, test=0.2, seed=3)
    assigned = full_splits(pool, "label", split, classification=True, is_image=False, test_provided=test_provided, given=given)
    # exactly the folder's items are validation items: none drawn from the training folder by split.val
    assert (assigned == "val").tolist() == given.notna().tolist()
    held_out = int((assigned == "test").sum())
    assert held_out == (0 if test_provided else pytest.approx(0.2 * 240, abs=3))  # split.test: a share of the training folder
    assert set(assigned) == ({"train", "val"} if test_provided else {"train", "val", "test"})


def test_a_near_copy_of_a_validation_image_in_a_held_out_split_is_counted() -> None:
    """val/ item v and training-folder item t are one near-duplicate group; t was held out as test."""
    from trainwise.config import load_config
    from trainwise.steps.inputs import IngestedData
    from trainwise.steps.prepare import _near_copies_of_val

    pool = pd.DataFrame({"id": ["v", "t", "u"], "label": ["a", "a", "b"], "sha256": ["1", "2", "3"], "dup_group": [7, 7, None]})
    splits = pd.DataFrame({"id": ["v", "t", "u"], "label": ["a", "a", "b"], "split": ["val", "test", "train"], "scope": "full"})
    data = IngestedData(pool, None, "label", [], False, pd.Series([VAL, None, None]))

    cfg = load_config(Path(__file__).resolve().parents[2] / "projects" / "digits")  # its threshold: 1%
    result = _near_copies_of_val(cfg, data, splits)
    assert result.value == 1.0 and not result.passed  # only counting copies in "train" would find none
