"""Test-vs-training drift and shortcut rows on real data (scikit-learn's digits and wine) and planted faults."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_wine

from trainwise.checks.drift import train_test_drift_checks
from trainwise.checks.shortcuts import MIN_CLASS_ITEMS, property_aucs, shortcut_check
from trainwise.data.image_properties import image_properties, sharpness
from trainwise.data.manifest import pixel_stats

DIGITS = load_digits()
IMAGES = [(x * 255 / 16).round().astype(np.uint8)[:, :, None] for x in DIGITS.images]
LABELS = pd.Series(DIGITS.target.astype(str))
SPLIT = np.random.default_rng(0).permutation(len(IMAGES))
TRAIN, TEST = SPLIT[:1400], SPLIT[1400:]


def properties(images: list[np.ndarray], formats: list[str] | None = None, sizes: list[int | None] | None = None) -> pd.DataFrame:
    """image_properties of the images as files would give them: encoded (PNG unless told), maybe resized first."""
    rows, seen = [], []
    for i, image in enumerate(images):
        picture = Image.fromarray(image[:, :, 0])
        if sizes is not None and sizes[i]:
            picture = picture.resize((sizes[i], sizes[i]), Image.BILINEAR)
        fmt = formats[i] if formats else "PNG"
        encoded = io.BytesIO()
        picture.save(encoded, fmt)
        pixels = np.asarray(picture)[:, :, None]
        rows.append(pixel_stats(pixels) | {"width": picture.width, "height": picture.height, "bytes": encoded.tell(), "format": fmt})
        seen.append(np.asarray(picture.resize((8, 8), Image.BILINEAR))[:, :, None])  # the network's size, as the cache holds
    return image_properties(pd.DataFrame(rows), np.stack(seen), np.arange(len(seen)))


@pytest.fixture(scope="module")
def digits_properties() -> pd.DataFrame:
    return properties(IMAGES)


def drift_rows(table: pd.DataFrame, train: np.ndarray, test: np.ndarray) -> dict[str, object]:
    found = train_test_drift_checks(table.iloc[train].reset_index(drop=True), table.iloc[test].reset_index(drop=True),
                                    kind="image properties", max_statistic=0.2, max_auc=0.75, seed=0)  # fmt: skip
    return {row.name: row for row in found.checks} | {"table": found.drift}


def test_a_random_split_of_digits_does_not_drift(digits_properties: pd.DataFrame) -> None:
    rows = drift_rows(digits_properties, TRAIN, TEST)
    assert rows["test_property_drift"].passed and rows["test_domain_classifier_auc"].passed
    assert 0.4 < rows["test_domain_classifier_auc"].value < 0.6
    # grey images: the channel's mean and spread are brightness and contrast, compared once
    assert {"brightness", "contrast", "sharpness", "width", "aspect", "format_PNG"} <= set(rows["table"]["property"])
    assert "mean_c0" not in set(rows["table"]["property"])


@pytest.mark.parametrize(
    ("planted", "cause"),
    [("inverted", "brightness"), ("resized", "width"), ("jpeg", "format_JPEG")],
)
def test_a_drifted_test_set_fails_and_names_the_property(planted: str, cause: str) -> None:
    images = [IMAGES[i] for i in TRAIN] + [255 - IMAGES[i] if planted == "inverted" else IMAGES[i] for i in TEST]
    formats = ["PNG"] * len(TRAIN) + ["JPEG" if planted == "jpeg" else "PNG"] * len(TEST)
    sizes = [None] * len(TRAIN) + [32 if planted == "resized" else None] * len(TEST)
    table = properties(images, formats, sizes)
    rows = drift_rows(table, np.arange(len(TRAIN)), np.arange(len(TRAIN), len(images)))
    assert not rows["test_property_drift"].passed and cause in rows["test_property_drift"].meaning
    assert not rows["test_domain_classifier_auc"].passed and rows["test_domain_classifier_auc"].value > 0.95
    assert rows["table"].loc[rows["table"]["property"] == cause, "drifted"].item()


def test_table_features_drift_when_one_is_rescaled() -> None:
    wine = load_wine(as_frame=True).data
    order = np.random.default_rng(1).permutation(len(wine))
    train, test = wine.iloc[order[:120]].reset_index(drop=True), wine.iloc[order[120:]].reset_index(drop=True)
    clean = train_test_drift_checks(train, test, kind="features", max_statistic=0.2, max_auc=0.75, seed=0)
    assert all(row.passed for row in clean.checks), [row.meaning for row in clean.checks]
    shifted = test.assign(proline=test["proline"] * 3)  # the test file's proline in other units
    found = train_test_drift_checks(train, shifted, kind="features", max_statistic=0.2, max_auc=0.75, seed=0)
    assert [row.passed for row in found.checks] == [False, False]
    assert found.drift.iloc[0]["property"] == "proline" and list(found.drift["drifted"]) == [True] + [False] * 12


def test_digits_have_no_shortcut(digits_properties: pd.DataFrame) -> None:
    result = shortcut_check(digits_properties, LABELS, max_auc=0.97)
    assert result.check.passed and 0.7 < result.check.value < 0.9  # the digit 1 by contrast: stroke, not a cue
    assert result.aucs.shape[0] == 10 and "sharpness" not in result.aucs.columns  # content, measured: not a cue
    assert result.check.figure is not None


@pytest.mark.parametrize(("planted", "cause"), [("dark", "brightness"), ("png", "format_PNG"), ("large", "width")])
def test_a_class_made_otherwise_is_a_shortcut(planted: str, cause: str) -> None:
    """One class all dark, the only PNGs among JPEGs, or the only large images: the row fails naming it."""
    odd = (LABELS == "3").to_numpy()
    images = [(x * 0.4).astype(np.uint8) if planted == "dark" and o else x for x, o in zip(IMAGES, odd, strict=True)]
    formats = ["PNG" if o or planted != "png" else "JPEG" for o in odd]
    sizes = [32 if planted == "large" and o else None for o in odd]
    result = shortcut_check(properties(images, formats, sizes), LABELS, max_auc=0.97)
    assert not result.check.passed and result.check.value > 0.99
    assert f"class 3 by {cause}" in result.check.meaning
    assert result.aucs.loc["3", cause] > 0.99


def test_property_aucs_orient_ignore_constants_and_skip_small_classes() -> None:
    rng = np.random.default_rng(0)
    labels = pd.Series(["a"] * 50 + ["b"] * 50 + ["c"] * (MIN_CLASS_ITEMS - 1))
    table = pd.DataFrame({"dark": np.r_[rng.uniform(0, 0.1, 50), rng.uniform(0.5, 1, 50 + MIN_CLASS_ITEMS - 1)],
                          "constant": 1.0, "noise": rng.normal(size=len(labels))})  # fmt: skip
    aucs = property_aucs(table, labels)
    assert list(aucs.index) == ["a", "b"]  # c has too few items to judge
    assert aucs.loc["a", "dark"] == 1.0  # the class is the darkest: oriented, not 0
    assert (aucs["constant"] == 0.5).all() and (aucs["noise"] < 0.75).all()


def test_sharpness_falls_with_blur_and_keeps_the_order_asked() -> None:
    sharp = np.zeros((3, 16, 16, 1), np.uint8)
    sharp[0, ::2] = 255  # stripes
    sharp[1] = np.asarray(Image.fromarray(sharp[0, :, :, 0]).resize((4, 4)).resize((16, 16), Image.BILINEAR))[:, :, None]
    values = sharpness(sharp, np.array([2, 0, 1]))
    assert values[0] == 0.0 and values[1] > values[2] > 0  # flat, striped, blurred stripes
