"""Near duplicates: copies are found, lookalikes and chains of small changes are not joined.

Real pixels throughout: scikit-learn's photos and digits, copies made the way users make them
(rescaled, re-encoded as JPEG, cropped by a few pixels, brightness changed with Pillow).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from pydantic import ValidationError
from sklearn.datasets import load_digits, load_sample_images

from trainwise.config.sources import DataConfig
from trainwise.data import duplicates
from trainwise.data.duplicates import duplicate_groups, exact_groups, signature
from trainwise.data.manifest import add_duplicate_groups, duplicate_report, scan_images
from trainwise.data.records import TRAIN, ImageListing, ImageRecord


def photo_patches() -> list[np.ndarray]:
    """24 distinct 120x160 patches of scikit-learn's two sample photos (non-overlapping)."""
    patches = []
    for photo in load_sample_images().images:
        for top in range(0, 360, 120):
            for left in range(0, 640, 160):
                patches.append(np.ascontiguousarray(photo[top : top + 120, left : left + 160]))
    return patches


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze()).save(buffer, "JPEG", quality=quality)
    out = np.asarray(Image.open(buffer))
    return out[:, :, None] if out.ndim == 2 else out


def copies(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    small = min(h, w) < 32
    scaled = cv2.resize(image, (w * 2, h * 2) if small else (w // 2, h // 2), interpolation=cv2.INTER_LINEAR if small else cv2.INTER_AREA)
    brighter = np.asarray(ImageEnhance.Brightness(Image.fromarray(image.squeeze())).enhance(0.8))
    cropped = image[1:, :] if small else image[2 : h - 3, 1 : w - 4]
    return [c[:, :, None] if c.ndim == 2 else c for c in (scaled, jpeg(image), cropped, brighter)]


def groups_of(images: list[np.ndarray], **kwargs: float) -> np.ndarray:
    return duplicate_groups(
        [str(i) for i in range(len(images))], [signature(x) for x in images], [(x.shape[1], x.shape[0]) for x in images], **kwargs
    )


def test_every_kind_of_copy_of_a_photo_joins_its_source_and_distinct_photos_stay_apart() -> None:
    sources = photo_patches()
    planted = [copy for source in sources for copy in copies(source)]
    groups = groups_of(sources + planted)
    n = len(sources)
    for i in range(n):
        assert all(groups[n + 4 * i + k] == groups[i] for k in range(4)), f"patch {i}: a copy was not joined"
    assert len(set(groups[:n])) == n, "distinct patches were joined"


def test_copies_of_8_pixel_digits_are_found_but_lookalike_digits_are_not_joined() -> None:
    digits = load_digits()
    images = [(x * 255 / 16).astype(np.uint8)[:, :, None] for x in digits.images]
    planted_from = list(range(0, 400, 4))
    planted = [copies(images[i])[k % 4] for k, i in enumerate(planted_from)]
    groups = groups_of(images + planted)
    assert all(groups[len(images) + k] == groups[i] for k, i in enumerate(planted_from))
    # The old 64-bit hash put 1,703 upscaled digits of all ten classes into one group.
    sizes = np.bincount(groups[: len(images)])
    assert sizes.max() <= 3
    labels = pd.Series(digits.target).groupby(groups[: len(images)]).nunique()
    assert (labels == 1).all()


def test_a_chain_of_small_changes_does_not_become_one_group() -> None:
    # Each frame differs little from the next, so every neighbour pair verifies, but the first
    # frame (a 0) and the last (a 1) look nothing alike: groups must not grow along the chain.
    digits = load_digits()
    zero, one = (cv2.resize((digits.images[i] * 255 / 16).astype(np.float32), (64, 64)) for i in (0, 1))
    frames = [np.clip((1 - t) * zero + t * one, 0, 255).astype(np.uint8)[:, :, None] for t in np.linspace(0, 1, 101)]
    groups = groups_of(frames)
    assert groups[0] != groups[-1]
    assert np.bincount(groups).max() < 40


def test_a_recoloured_drawing_is_not_a_copy_but_blank_images_of_any_size_are() -> None:
    patch = photo_patches()[5]
    recoloured = np.ascontiguousarray(patch[:, :, ::-1])  # same grey structure, other colours
    white, white_big, black = (np.full((h, h, 3), v, np.uint8) for h, v in ((40, 255), (90, 255), (40, 0)))
    groups = groups_of([patch, recoloured, white, white_big, black])
    assert groups[0] != groups[1]
    assert groups[2] == groups[3] != groups[4]


def test_exact_groups_and_items_without_a_signature() -> None:
    assert exact_groups(["a", "b", "a", "c", "b"]).tolist() == [0, 1, 0, 3, 1]
    patch = photo_patches()[0]
    groups = duplicate_groups(["x", "y", "x"], [signature(patch), None, None], [(160, 120)] * 3)
    assert groups.tolist() == [0, 1, 0]  # exact copies join without a signature; None never matches by pixels


def write_listing(root: Path, images: dict[str, np.ndarray]) -> ImageListing:
    records = []
    for name, pixels in images.items():
        path = root / "a" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        records.append(ImageRecord(id=path.stem, path=path, relpath=f"a/{name}", label="a", split=TRAIN))
    return ImageListing(root=root, records=records)


def test_exact_copies_are_reported_on_their_own_inside_a_near_group(tmp_path: Path) -> None:
    patch, other = photo_patches()[2], photo_patches()[9]
    listing = write_listing(tmp_path, {"p.png": patch, "p_copy.png": patch, "p.jpg": jpeg(patch, 90), "q.png": other})
    manifest = add_duplicate_groups(scan_images(listing, channels=3, max_pixels=10**8), 0.97)
    assert "signature" not in manifest
    report = duplicate_report(manifest)
    exact = report[report["kind"] == "exact"]
    near = report[report["kind"] == "near"]
    assert exact["paths"].tolist() == ["a/p.png|a/p_copy.png"]
    assert near["size"].tolist() == [3]
    flags = manifest.set_index("path")[["exact_dup", "near_dup"]]
    assert flags.loc["a/p.jpg"].tolist() == [False, True] and flags.loc["a/q.png"].tolist() == [False, False]


def test_a_hash_cache_without_signatures_is_rescanned(tmp_path: Path) -> None:
    patch = photo_patches()[3]
    listing = write_listing(tmp_path / "data", {"p.png": patch, "p.jpg": jpeg(patch, 90)})
    cache = tmp_path / "hashes.parquet"
    scan_images(listing, channels=3, max_pixels=10**8, cache_file=cache)
    pd.read_parquet(cache).drop(columns=["signature"]).to_parquet(cache)  # as an older trainwise wrote it
    manifest = add_duplicate_groups(scan_images(listing, channels=3, max_pixels=10**8, cache_file=cache), 0.97)
    assert manifest["near_dup"].all()


def test_the_old_hash_distance_setting_gets_a_clear_error() -> None:
    with pytest.raises(ValidationError, match="near_duplicate_similarity"):
        DataConfig.model_validate({"source": {"kind": "digits"}, "near_duplicate_distance": 4})


def test_required_similarity_is_stricter_for_small_images() -> None:
    assert duplicates.required_similarity(0.97, (64, 64), (100, 80)) == pytest.approx(0.97)
    assert duplicates.required_similarity(0.97, (8, 8), (16, 16)) == pytest.approx(0.9925)


def test_digits_upscaled_to_16_px_keep_lookalikes_apart() -> None:
    # The case: upscaled digits made one group of 1,703 spanning all ten classes. The
    # thumbnails alone still join dozens of similar 1s; their detail must agree as well.
    digits = load_digits()
    images = [cv2.resize((x * 255 / 16).astype(np.uint8), (16, 16), interpolation=cv2.INTER_LINEAR)[:, :, None] for x in digits.images]
    groups = groups_of(images)
    assert np.bincount(groups).max() <= 12
    assert (pd.Series(digits.target).groupby(groups).nunique() == 1).all()


def test_a_small_image_cut_by_a_pixel_joins_its_source_and_groups_stay_small() -> None:
    # A copy cut by a pixel is stretched by 7% in its thumbnail and ranks behind lookalikes; the
    # crop-aware candidates and the crop framing must still find its source.
    digits = load_digits()
    images = [cv2.resize((x * 255 / 16).astype(np.uint8), (16, 16), interpolation=cv2.INTER_LINEAR)[:, :, None] for x in digits.images]
    rng = np.random.default_rng(0)
    sources = rng.choice(len(images), 300, replace=False)
    cut = [np.ascontiguousarray(images[i][[1, 0, 0, 0][k % 4] : 16 - [0, 1, 0, 0][k % 4], [0, 0, 1, 0][k % 4] : 16 - [0, 0, 0, 1][k % 4]]) for k, i in enumerate(sources)]
    groups = groups_of(images + cut)
    assert all(groups[len(images) + k] == groups[i] for k, i in enumerate(sources))
    originals = pd.Series(range(len(images))).groupby(groups[: len(images)]).size()
    assert originals.max() <= 12
