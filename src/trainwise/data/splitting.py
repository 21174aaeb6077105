"""The full data's train/validation/test assignment: one function, read by `sample` and `prepare`.

The sample is drawn from the full data's training split only (nested), so the pipeline checks and
a study tuned on the sample never see a validation or test item. Both steps call `full_splits`
with the same inputs and get the same assignment; prepare verifies the nesting.
"""

from __future__ import annotations

import pandas as pd

from trainwise.config import SplitConfig
from trainwise.data.sampling import group_split, strata


def duplicate_groups(pool: pd.DataFrame, label: str, *, is_image: bool, enabled: bool = True) -> pd.Series:
    """A group id per pool item; items of one group land in one split.

    Images: ingest's exact and near duplicate groups. Tables: rows with identical features (the
    label aside: conflicting labels for the same features are one group too).
    """
    singles = pd.Series(range(len(pool)), index=pool.index)
    if not enabled:
        return singles
    if is_image:
        if "dup_group" not in pool:
            return singles
        # Ungrouped items get negative ids of their own, apart from ingest's group numbers.
        return pool["dup_group"].astype("Int64").fillna(-1 - singles).astype("int64")
    features = [c for c in pool.columns if c not in ("id", label)]
    if not features:
        return singles
    return pool.groupby(features, dropna=False, sort=False).ngroup().reindex(pool.index)


def full_splits(
    pool: pd.DataFrame, label: str, split: SplitConfig, *, classification: bool, is_image: bool, test_provided: bool,
    given: pd.Series | None = None,
) -> pd.Series:
    """train/val/test for every labelled pool item (indexed like `pool`).

    A provided labelled test set stays the test set (`test_provided`); otherwise part of the pool is held out.
    `given` (indexed like `pool`): "val" for the items of a provided validation folder, which stay the
    validation split (split.val is then not used), NaN for the rest, which are split as usual. A
    duplicate group that spans the two folders is left as the user made it, and counted by prepare's
    leakage rows.
    """
    groups = duplicate_groups(pool, label, is_image=is_image, enabled=split.group_duplicates)
    kinds = strata(pool[label], classification=classification)
    fixed = given.notna() if given is not None else pd.Series(False, index=pool.index)
    fractions = {} if test_provided or not split.test else {"test": split.test}
    if not fixed.any():
        fractions["val"] = split.val
    assigned = pd.Series("train", index=pool.index, name="split")
    assigned[fixed] = given[fixed] if given is not None else "train"
    rest = ~fixed
    if rest.any():
        assigned[rest] = group_split(kinds[rest], groups[rest], fractions, seed=split.seed)
    return assigned
