"""Label errors by confident learning (cleanlab) on out-of-sample predictions of a small model.

Why not the project's network: the estimate needs a prediction for every item from a model that
never saw it, which means K fits; a K-fold nearest-neighbour or logistic model costs well under a
second on a 500-item sample, where K fits of a CNN cost minutes. Why cleanlab: its confident joint
(Northcutt et al., JAIR 2021) counts an item as mislabelled only when the model's probability for
another class exceeds that class's own average self-confidence, so a model that is merely unsure
flags little; what a weak model confuses (a shirt for a pullover) it can still flag, which is why the
thresholds below were measured on clean real data (figures in `label_issue_checks`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainwise import plots
from trainwise.checks import CheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

THUMBNAIL = 16  # side of the grey-and-colour thumbnails the image model sees: enough to tell classes apart, cheap to fit
MAX_FOLDS = 5
SHOWN = 32  # the most suspicious images in the grid
MIN_SKILL = 0.25  # (accuracy - chance) / (1 - chance) of the thumbnail kNN below which images are not judged:
# clean digits 0.99, Fashion-MNIST (500 items) about 0.77, digits with 30% of labels changed about 0.6;
# photos whose class thumbnails do not tell apart (CIFAR-like) fall under it. Not for tables: label
# noise itself lowers it (breast cancer with 30% changed: about 0.2), and logistic regression on the
# prepared features is the usual tabular baseline
MIN_JUDGED_CLASS = 10  # items a class needs before the share of its items that look like another class means anything


@dataclass
class LabelAudit:
    """Check rows, and the suspected items (position, given and suggested class, label quality) worst first."""

    results: list[CheckResult]
    suspects: pd.DataFrame


def image_features(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) images as flat 16x16 thumbnails in 0..1 (area-averaged, so no aliasing)."""
    x = images.float() / 255.0
    if max(x.shape[-2:]) > THUMBNAIL:
        x = torch.nn.functional.adaptive_avg_pool2d(x, THUMBNAIL)
    return x.reshape(len(x), -1).numpy()


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, *, images: bool, seed: int) -> np.ndarray:
    """Each item's class probabilities from a model fitted on the other folds (stratified K-fold)."""
    folds = int(min(MAX_FOLDS, np.bincount(labels).min()))
    train_size = len(labels) * (folds - 1) // folds
    if images:
        # nearest neighbours on the leading principal components: 1.7 s for 2,000 Fashion-MNIST
        # items on 2 cores, out-of-sample accuracy 0.79 (logistic regression: 0.81 in 11-74 s)
        model: BaseEstimator = make_pipeline(
            PCA(n_components=min(32, features.shape[1], train_size - 1), random_state=seed),
            KNeighborsClassifier(n_neighbors=min(15, train_size - 1), weights="distance"),
        )
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=cv, method="predict_proba")


def label_issue_checks(
    features: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    max_share: float,
    max_class_share: float,
    seed: int,
    images: np.ndarray | None = None,
) -> LabelAudit:
    """Two rows: the estimated share of mislabelled items, and the class whose items most look like another.

    `features` (N, D) and `labels` (N,) in 0..C-1; `images` (N, H, W, C) for the grid of suspects.
    Measured with the defaults 0.25 and 0.45, three or four seeds each: clean digits share 0.003
    (pair 0.00-0.05), clean wine 0.0, breast cancer 0.002, 500-item draws of Fashion-MNIST 0.19-0.22
    (pair 0.22-0.30; 0.36 on one slice); 30% of labels changed: wine 0.32-0.39, breast cancer
    0.31-0.36, digits 0.34, Fashion-MNIST 0.43-0.52; a folder '0' of 15 zeros and 35 ones in a
    500-item draw: pair 0.56-0.93 on Fashion-MNIST, 0.31-0.71 on digits.
    """
    present = np.flatnonzero(np.bincount(labels, minlength=len(classes)) >= 2)
    keep = np.isin(labels, present)
    if len(present) < 2 or keep.sum() < 2 * MAX_FOLDS:
        return LabelAudit([_not_judged(max_share, "too few labelled items for a cross-validated model")], _no_suspects())
    skipped = [classes[c] for c in np.unique(labels[~keep])]
    if skipped:  # a single item cannot be held out and predicted by the rest of its class
        log.info("label check: classes with one item are left out: %s", ", ".join(skipped))
    if not np.isfinite(features[keep]).all():  # check_inputs fails such inputs and says why; no model fits them
        return LabelAudit([_not_judged(max_share, "the inputs hold NaN or infinite values (see input_shape_and_range)")], _no_suspects())
    index = np.flatnonzero(keep)
    dense = np.searchsorted(present, labels[index])  # classes renumbered 0..K-1, as cleanlab needs
    probabilities = out_of_sample_probabilities(features[index], dense, images=images is not None, seed=seed)
    names = [classes[c] for c in present]

    accuracy = float((probabilities.argmax(axis=1) == dense).mean())
    chance = float(np.bincount(dense).max() / len(dense))
    skill = (accuracy - chance) / max(1 - chance, 1e-12)
    if images is not None and skill < MIN_SKILL:
        # a model that barely beats chance confuses everything: its "label issues" are its own errors
        return LabelAudit([_not_judged(max_share, f"the small model is too weak to tell label errors from hard classes "
                                                  f"(out-of-sample accuracy {accuracy:.1%}, chance {chance:.1%})")], _no_suspects())  # fmt: skip
    # calibrated: the confident joint rescaled to the observed class counts; on 30% changed labels
    # it reads 0.31-0.39 on wine and breast cancer where the plain off-diagonal count reads 0.25-0.32
    share = num_label_issues(dense, probabilities, estimation_method="off_diagonal_calibrated") / len(dense)
    suspected = find_label_issues(dense, probabilities, n_jobs=1)  # no fork of a process running MLflow's threads
    suggested = probabilities.argmax(axis=1)
    quality = get_label_quality_scores(dense, probabilities)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (dense[suspected], suggested[suspected]), 1)
    # the largest share of one class's items that look like one other class: a folder filled with
    # another class's images is concentrated on one pair, where classes a weak model confuses
    # (Fashion-MNIST's shirts with t-shirts, pullovers and coats) spread over several
    counts = np.bincount(dense, minlength=len(names))
    # classes under MIN_JUDGED_CLASS items are left out of this row: one of two items is already 50%
    # (their size is prepare's class_sizes row)
    pair_share = np.where((counts >= MIN_JUDGED_CLASS)[:, None], confusion / counts[:, None], 0.0)
    worst, other = np.unravel_index(int(pair_share.argmax()), pair_share.shape)

    order = np.flatnonzero(suspected)[np.argsort(quality[suspected], kind="stable")]
    suspects = pd.DataFrame(
        {
            "position": index[order],
            "given": [names[c] for c in dense[order]],
            "suggested": [names[c] for c in suggested[order]],
            "label_quality": quality[order],
        }
    )
    grid = None
    if images is not None:
        shown = order[:SHOWN]
        grid = plots.image_batch(
            images[index[shown]],
            [f"{names[g]} → {names[s]}" for g, s in zip(dense[shown], suggested[shown], strict=True)],
            title=f"Most suspicious labels (given → looks like), {len(order):,} suspected",
        )
    heatmap = plots.confusion_matrix(
        confusion, names, normalize=False, title="Suspected label errors", xlabel="looks like", ylabel="given label"
    )
    results = [
        CheckResult(
            "label_issues",
            share <= max_share,
            float(share),
            max_share,
            "estimated share of mislabelled items (cleanlab's confident learning on out-of-sample predictions of a small "
            f"cross-validated model, {len(dense):,} items of the sample)",
            "look at the most suspicious items (label_issues.csv, the grid) and fix or drop the wrong labels; "
            "if they are right, the classes are hard to tell apart from pixels alone: raise checks.max_label_issue_share",
            figure=grid,
        ),
        _by_class_row(
            names[worst],
            names[other],
            float(pair_share[worst, other]),
            judged=bool((counts >= MIN_JUDGED_CLASS).any()),
            threshold=max_class_share,
            heatmap=heatmap,
        ),
    ]
    return LabelAudit(results, suspects)


def _by_class_row(given: str, looks_like: str, share: float, *, judged: bool, threshold: float, heatmap: Figure) -> CheckResult:
    if not judged:
        return CheckResult(
            "label_issues_by_class", True, 0.0, threshold, f"not judged: no class has {MIN_JUDGED_CLASS} items in the sample",
            "use a larger sample (sample.size)", figure=heatmap,
        )  # fmt: skip
    return CheckResult(
        "label_issues_by_class",
        share <= threshold,
        share,
        threshold,
        f"largest share of one class's items that look like one other class: '{given}' ({share:.0%} of its items look like '{looks_like}')",
        f"open the '{given}' items: a folder filled with another class's images, or two class names swapped, shows up here",
        figure=heatmap,
    )


def _not_judged(max_share: float, why: str) -> CheckResult:
    return CheckResult("label_issues", True, 0.0, max_share, f"not judged: {why}", "use a larger sample (sample.size)")


def _no_suspects() -> pd.DataFrame:
    return pd.DataFrame({"position": pd.Series(dtype=int), "given": [], "suggested": [], "label_quality": []})
