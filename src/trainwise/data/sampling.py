"""Stratified, seeded sampling and splitting that keeps duplicate groups together."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

# Every class keeps at least this many items in the sample (or all it has): enough for the check
# step's train/val split to see each class on both sides.
MIN_PER_CLASS = 5


def strata(values: pd.Series, *, classification: bool, bins: int = 10) -> pd.Series:
    """The stratum of each item: its label, or its target's quantile bin for regression."""
    if classification:
        return values.astype(str)
    numeric = pd.to_numeric(values, errors="coerce")
    q = max(1, min(bins, numeric.notna().sum() // 4))
    return pd.qcut(numeric, q=q, labels=False, duplicates="drop").astype(str)


def stratified_sample(groups: pd.Series, *, size: int | None, fraction: float | None, seed: int) -> tuple[pd.Index, list[str]]:
    """Index labels of a stratified sample of `groups` (one stratum per item), and notes on it."""
    total = len(groups)
    wanted = min(total, size if size is not None else max(1, round((fraction or 1.0) * total)))
    counts = groups.value_counts().sort_index()
    quota = _allocate(counts, wanted)
    notes = [
        f"stratum {name!r} has {counts[name]} items, fewer than the {MIN_PER_CLASS} the sample keeps per class: taken whole"
        for name in counts.index
        if counts[name] < MIN_PER_CLASS
    ]
    rng = np.random.default_rng(seed)
    chosen = []
    for name, n in quota.items():
        members = np.sort(groups.index[groups == name].to_numpy())  # sorted: the seed alone decides
        chosen.extend(rng.choice(members, size=n, replace=False).tolist())
    return pd.Index(sorted(chosen)), notes


def _allocate(counts: pd.Series, wanted: int) -> dict[str, int]:
    """Proportional quotas (largest remainder) with a floor of MIN_PER_CLASS, capped by what exists."""
    floor = {k: min(int(c), MIN_PER_CLASS) for k, c in counts.items()}
    exact = counts / counts.sum() * wanted
    quota = {k: max(floor[k], min(int(counts[k]), int(np.floor(exact[k])))) for k in counts.index}
    remainder = sorted(counts.index, key=lambda k: exact[k] - np.floor(exact[k]), reverse=True)
    i = 0
    while sum(quota.values()) < wanted and any(quota[k] < counts[k] for k in counts.index):
        k = remainder[i % len(remainder)]
        if quota[k] < counts[k]:
            quota[k] += 1
        i += 1
    return quota


def group_split(
    strata_of: pd.Series, groups: pd.Series, fractions: Mapping[str, float], *, seed: int
) -> pd.Series:
    """Assign every item a split name so that each duplicate group lies in one split.

    Groups are dealt out per stratum (a group's stratum is its first member's), in a seeded random
    order, filling each split's quota in turn; whatever is left goes to 'train'. Most groups are
    single items, so the splits come out stratified to within a group's size.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"stratum": strata_of, "group": groups})
    first = frame.groupby("group", sort=True).agg(stratum=("stratum", "first"), size=("stratum", "size"))
    assignment: dict[object, str] = {}
    for _, members in first.groupby("stratum", sort=True):
        order = members.index.to_numpy()[rng.permutation(len(members))]
        total = int(members["size"].sum())
        filled = dict.fromkeys(fractions, 0)
        for group in order:
            size = int(members.at[group, "size"])
            target = next((name for name in fractions if filled[name] + size <= round(fractions[name] * total)), "train")
            assignment[group] = target
            if target in filled:
                filled[target] += size
    return frame["group"].map(assignment).rename("split")
