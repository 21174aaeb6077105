"""The label-error check (cleanlab on out-of-sample predictions) and the class-size check, on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from trainwise.checks.class_sizes import class_size_check
from trainwise.checks.labels import image_features, label_issue_checks

SHARE, CLASS_SHARE = 0.25, 0.45  # the defaults of checks.max_label_issue_share and max_class_label_issue_share


def digits_images(n: int = 500, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A 500-item stratified draw of scikit-learn's digits as uint8 (N, 1, 8, 8): the default sample size."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    index = rng.permutation(len(digits.target))[:n]
    x = torch.from_numpy((digits.images[index] * 255 / 16).round().astype(np.uint8))[:, None]
    return x, digits.target[index]


def flip(labels: np.ndarray, share: float, classes: int, seed: int = 1) -> np.ndarray:
    """`share` of the labels replaced by a different class, at random."""
    rng = np.random.default_rng(seed)
    flipped = labels.copy()
    chosen = rng.random(len(labels)) < share
    flipped[chosen] = (labels[chosen] + rng.integers(1, classes, chosen.sum())) % classes
    return flipped


def audit(features: np.ndarray, labels: np.ndarray, images: np.ndarray | None = None):
    classes = [str(c) for c in range(labels.max() + 1)]
    return label_issue_checks(features, labels, classes, max_share=SHARE, max_class_share=CLASS_SHARE, seed=0, images=images)


def test_clean_digit_images_pass_and_thirty_percent_flipped_labels_fail() -> None:
    x, y = digits_images()
    clean = audit(image_features(x), y, images=x.permute(0, 2, 3, 1).numpy())
    assert all(r.passed for r in clean.results), [(r.name, r.value) for r in clean.results]
    assert clean.results[0].value < 0.05

    noisy_labels = flip(y, 0.3, 10)
    noisy = audit(image_features(x), noisy_labels, images=x.permute(0, 2, 3, 1).numpy())
    share = noisy.results[0]
    assert not share.passed and share.value > 0.2, share
    assert share.figure is not None  # the grid of the most suspicious images
    # the suspects are mostly the flipped items (precision of confident learning)
    flipped = noisy_labels != y
    assert flipped[noisy.suspects["position"]].mean() > 0.8
    assert len(noisy.suspects) > 0.5 * flipped.sum()


@pytest.mark.parametrize("loader", [load_wine, load_breast_cancer], ids=["wine", "breast_cancer"])
def test_clean_tables_pass_and_flipped_tables_fail(loader) -> None:
    x, y = loader(return_X_y=True)
    assert all(r.passed for r in audit(x, y).results)
    assert not audit(x, flip(y, 0.3, int(y.max()) + 1)).results[0].passed


def test_a_class_folder_filled_with_another_class_is_named() -> None:
    """Folder '0' holds 20 zeros and 50 images of ones (the ones are taken from folder '1', which keeps 132)."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    zeros, ones = np.flatnonzero(digits.target == 0), rng.permutation(np.flatnonzero(digits.target == 1))
    others = np.flatnonzero(digits.target > 1)
    keep = np.concatenate([zeros[:20], ones, others])
    labels = digits.target[keep].copy()
    labels[np.isin(keep, ones[:50])] = 0
    by_class = audit(digits.data[keep], labels).results[1]
    assert by_class.name == "label_issues_by_class"
    assert not by_class.passed, by_class
    assert "'0'" in by_class.meaning and "look like '1'" in by_class.meaning
    # and the same data without the mix-up passes
    assert audit(digits.data[keep], digits.target[keep]).results[1].passed


def test_classes_with_one_item_are_left_out_and_tiny_data_is_not_judged() -> None:
    x, y = digits_images(200)
    y = y.copy()
    y[0] = 10  # a class of one
    results = label_issue_checks(image_features(x), y, [str(c) for c in range(11)], max_share=SHARE,
                                 max_class_share=CLASS_SHARE, seed=0).results
    assert [r.name for r in results] == ["label_issues", "label_issues_by_class"]
    tiny = label_issue_checks(image_features(x[:6]), np.array([0, 1, 0, 1, 0, 1]), ["0", "1"], max_share=SHARE,
                              max_class_share=CLASS_SHARE, seed=0).results
    assert len(tiny) == 1 and tiny[0].passed and tiny[0].meaning.startswith("not judged")


def splits_frame(counts: dict[str, tuple[int, int, int]], sample_train: dict[str, int]) -> pd.DataFrame:
    rows = [(c, split, "full") for c, parts in counts.items() for split, n in zip(("train", "val", "test"), parts, strict=True) for _ in range(n)]
    rows += [(c, "train", "sample") for c, n in sample_train.items() for _ in range(n)]
    rows += [(None, "submit", "full")] * 3  # unlabelled test items are not a class
    return pd.DataFrame(rows, columns=["label", "split", "scope"])


def test_a_class_with_two_images_is_named_before_training() -> None:
    ok = class_size_check(splits_frame({"cat": (40, 5, 5), "dog": (30, 4, 4)}, {"cat": 20, "dog": 15}), min_items=5)
    assert ok.passed and ok.value == 30
    tiny = class_size_check(splits_frame({"cat": (40, 5, 5), "dog": (30, 4, 4), "fox": (2, 0, 0)}, {"cat": 20, "dog": 15, "fox": 1}), min_items=5)
    assert not tiny.passed and tiny.value == 2
    assert "'fox'" in tiny.meaning and "train 2, val 0, test 0" in tiny.meaning
    # the sample's training split is reported, not judged: a class of 100 in 10,000 has 4 items there
    imbalanced = class_size_check(splits_frame({"cat": (8000, 900, 900), "dog": (80, 10, 10)}, {"cat": 400, "dog": 4}), min_items=5)
    assert imbalanced.passed and "sample train 4" in imbalanced.meaning


def test_images_a_thumbnail_model_cannot_tell_apart_are_not_judged() -> None:
    """Noise images with random labels: the kNN is at chance, so its 'label issues' would be its own errors."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (300, 3, 16, 16), dtype=np.uint8))
    y = rng.integers(0, 10, 300)
    rows = audit(image_features(x), y, images=x.permute(0, 2, 3, 1).numpy()).results
    assert len(rows) == 1 and rows[0].passed and "too weak" in rows[0].meaning
