"""Classes too small to learn or to score, said at prepare time, before any compute is spent.

A class with two images ends up with one training item, or none in validation and test: the model
cannot learn it, its validation recall is 0/0, and a stratified K-fold on the sample cannot even be
built. Such a class is found here, by name, rather than as a NaN in a per-class metric after training.
"""

from __future__ import annotations

import pandas as pd

from trainwise import plots
from trainwise.checks import CheckResult


def class_size_check(splits: pd.DataFrame, *, min_items: int) -> CheckResult:
    """The smallest class's count in the full data's training split, against `min_items`.

    `splits`: prepare's splits.parquet (label, split, scope). The held-out splits and the sample's
    training split are reported in the message but do not decide: the sample keeps at least 5 items
    of every class, and its validation share takes some of them, so a class with 100 of 10,000
    items has 4 in the sample's training split while the full data has plenty to learn from.
    """
    labelled = splits[splits["split"].isin(["train", "val", "test"]) & splits["label"].notna()]
    counts = labelled.assign(label=labelled["label"].astype(str)).groupby(["label", "scope", "split"]).size().unstack(["scope", "split"], fill_value=0)
    training = counts.reindex(columns=[("full", "train"), ("sample", "train")], fill_value=0)
    full = training[("full", "train")].sort_values(kind="stable")
    name, value = str(full.index[0]), int(full.iloc[0])
    small = full[full < min_items]
    parts = ", ".join(f"{split} {int(counts.loc[name].get(('full', split), 0))}" for split in ("train", "val", "test"))
    meaning = (
        f"fewest items of one class in the full training split: '{name}' (full data: {parts}; "
        f"sample train {int(training.loc[name, ('sample', 'train')])})"
    )
    if len(small) > 1:
        meaning += f"; {len(small)} classes under {min_items}: {', '.join(map(str, small.index[:10]))}"
    figure = plots.class_distribution(full.to_dict(), title="Training items per class (full data)")
    return CheckResult(
        "class_sizes",
        value >= min_items,
        float(value),
        float(min_items),
        meaning,
        "collect more items of the small classes, merge them into a related class, or drop them from the project; "
        "lower checks.min_class_items only if a class this small is meant to be learnt",
        figure=figure,
    )
