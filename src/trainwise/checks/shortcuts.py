"""Shortcuts: a class that an image property alone picks out, so a model can learn the property, not the class.

One class all dark, the only PNGs, the only large photos: a network finds such a cue faster than
the content and scores well on validation data collected the same way, then fails in use. The row
measures, for every class with enough items and every property, how well the property alone ranks
the class's items above (or below) all others: the one-vs-rest ROC AUC of a threshold on the
property, a decision stump's skill. It fails when a class is all but separated by one property.

Sharpness and bytes per pixel are left out: they follow content (measured on scikit-learn's digits,
sharpness alone picks out the digit 1 at AUC 0.983 and bytes per pixel at 0.919, from stroke width),
while brightness, contrast, colour, size, aspect and format pick out no class of digits (at most
0.81), of 5,000 Fashion-MNIST photos (0.90: sandals, mostly background) or of 2,000 Open Clip Art
drawings (0.89).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from trainwise import plots
from trainwise.checks import CheckResult

CONTENT_PROPERTIES = ("sharpness", "bytes_per_pixel")  # follow the content itself: not a shortcut
MIN_CLASS_ITEMS = 10  # a class with fewer items separates by chance: it is not judged


@dataclass
class Shortcuts:
    check: CheckResult
    aucs: pd.DataFrame  # class x property: one-vs-rest AUC, oriented (0.5..1)


def property_aucs(properties: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """One-vs-rest ROC AUC of each property for each class (rows: classes, columns: properties).

    Oriented: max(AUC, 1 - AUC), since a class may be the darkest as well as the brightest. From
    ranks (Mann-Whitney U), with ties at their mean rank, so a constant property scores 0.5.
    """
    labels = labels.astype(str).to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    columns = [c for c in properties.columns if c not in CONTENT_PROPERTIES]
    values = properties[columns].astype(float)
    ranks = rankdata(values.fillna(values.median()).fillna(0.0).to_numpy(), axis=0)  # a missing value ranks mid-field
    n = len(labels)
    table = {}
    for name, count in zip(classes, counts, strict=True):
        if count < MIN_CLASS_ITEMS or count == n:
            continue
        inside = labels == name
        auc = (ranks[inside].sum(axis=0) - count * (count + 1) / 2) / (count * (n - count))
        table[name] = np.maximum(auc, 1 - auc)
    return pd.DataFrame.from_dict(table, orient="index", columns=columns).rename_axis("class")


def shortcut_check(properties: pd.DataFrame, labels: pd.Series, *, max_auc: float) -> Shortcuts:
    aucs = property_aucs(properties, labels)
    if aucs.empty:
        worst_class = worst_property = ""
        value = 0.5
    else:
        stacked = aucs.stack()
        worst_class, worst_property = stacked.idxmax()
        value = float(stacked.max())
    flagged = aucs.stack()[lambda s: s > max_auc] if len(aucs) else pd.Series(dtype=float)
    named = ", ".join(f"class {c} by {p} (AUC {a:.3f})" for (c, p), a in flagged.sort_values(ascending=False).head(5).items())
    meaning = (
        f"largest one-vs-rest ROC AUC with which one image property alone (brightness, contrast, colour, size, aspect, "
        f"format) picks out one class, over {len(aucs)} classes with {MIN_CLASS_ITEMS}+ items"
        + (f": class {worst_class} by {worst_property}" if worst_class else ": no class judged")
        + (f"; over the threshold: {named}" if named else "")
    )
    check = CheckResult(
        name="label_from_properties",
        passed=value <= max_auc,
        value=value,
        threshold=max_auc,
        meaning=meaning,
        advice=(
            "the label is predictable from how the images were made, not what they show: a network will learn that cue and "
            "fail on images made otherwise; collect that class like the others (same cameras, sizes, formats, lighting) or "
            "convert them alike; if the property is the class's real content (a colour class), raise "
            "checks.max_property_label_auc to 1"
        ),
        figure=plots.property_auc_heatmap(aucs, max_auc),
    )
    return Shortcuts(check, aucs)
