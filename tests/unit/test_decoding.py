"""Photos: one decode per file for ingest and the decoded cache, reduced JPEG decoding, worker processes.

Real pixels: scikit-learn's two 427x640 photos (cut to 425x633, sides one more than a multiple of 8,
so reduced decodes end in a partial pixel) and synthetic photo-like 400x533 JPEGs.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from trainwise.data import cache as decoded_cache
from trainwise.data import images, parallel
from trainwise.data.cache import build_cache, cache_key
from trainwise.data.images import ImageProblem, decode, resize, to_channels
from trainwise.data.manifest import OK, QUARANTINED, pixel_stats, scan_images
from trainwise.data.records import TRAIN, ImageListing, ImageRecord
from trainwise.errors import DataError
from trainwise.provenance import short_hash

LIMIT = 10**8


def photos() -> list[np.ndarray]:
    return [np.ascontiguousarray(p[:425, :633]) for p in load_sample_images().images]


def synthetic(seed: int, height: int = 533, width: int = 400) -> np.ndarray:
    """Smooth gradients, a few flat discs and sensor-like noise: what a JPEG of a photo holds."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)), np.cos(y * rng.uniform(1, 6)), x * y], axis=-1)
    image = (image - image.min()) / (np.ptp(image) + 1e-9) * 200
    for _ in range(6):
        cx, cy, radius = rng.integers(0, width), rng.integers(0, height), rng.integers(10, 80)
        image[(x * max(height, width) - cx) ** 2 + (y * max(height, width) - cy) ** 2 < radius**2] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, orientation: int = 1, quality: int = 90) -> bytes:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def full_decode_resized(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """What trainwise gave before reduced decoding: full decode, EXIF orientation, area resize."""
    return resize(to_channels(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), 3), size).astype(int)


def listing_of(root: Path, arrays: list[np.ndarray]) -> ImageListing:
    records = []
    for i, pixels in enumerate(arrays):
        path = root / "a" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(pixels))
        records.append(ImageRecord(id=path.stem, path=path, relpath=f"a/{path.name}", label="a", split=TRAIN))
    return ImageListing(root=root, records=records)


def items_of(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["status"] == OK][["id", "path", "label", "split", "sha256"]].reset_index(drop=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def in_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send everything after the first 4 files to worker processes, however quick it is."""
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_S", 0.0)
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_WARM_S", 0.0)
    monkeypatch.setattr(parallel, "PROBE_ITEMS", 4)


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_S", float("inf"))
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_WARM_S", float("inf"))


# -- reduced decoding ----------------------------------------------------------------------------


def test_a_large_jpeg_for_a_small_target_is_decoded_reduced_and_described_in_full() -> None:
    data = jpeg_bytes(synthetic(0))
    reduced = decode(data, channels=3, max_pixels=LIMIT, size=(32, 32))
    full = decode(data, channels=3, max_pixels=LIMIT)
    assert reduced.pixels.shape == (134, 100, 3)  # 1/4 scale: >= 64 px and 2x the target
    assert reduced.extent is not None and reduced.extent.height == 133.25
    assert (reduced.info.width, reduced.info.height) == (full.info.width, full.info.height) == (400, 533)
    assert reduced.info.sha256 == full.info.sha256  # the hash is of the file's bytes, however it is decoded
    assert full.pixels.shape == (533, 400, 3) and full.extent is None
    assert decode(data, channels=3, max_pixels=LIMIT, size=(224, 224)).pixels.shape == (533, 400, 3)  # too close: in full


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decoding_changes_the_pixels_by_under_one_level(orientation: int) -> None:
    # Measured: mean |difference| from a full decode + the same area resize 0.26-0.82 levels on these
    # images (2x margin); ignoring the partial edge pixel gave 1.9-3.0, a wrong EXIF anchor 3.2-5.1.
    for pixels in [*photos(), synthetic(1)]:
        data = jpeg_bytes(pixels, orientation)
        for size in [(16, 16), (32, 32), (24, 40), (64, 64)]:
            reduced = decode(data, channels=3, max_pixels=LIMIT, size=size)
            assert reduced.extent is not None
            difference = np.abs(reduced.resized(size).astype(int) - full_decode_resized(data, size))
            assert difference.mean() < 1.0, (orientation, size, difference.mean())


def test_the_partial_edge_pixel_is_weighted_not_averaged_in_whole() -> None:
    data = jpeg_bytes(photos()[0], orientation=3)  # rotated 180: the partial row and column come first
    reduced = decode(data, channels=3, max_pixels=LIMIT, size=(32, 32))
    reference = full_decode_resized(data, (32, 32))
    exact = np.abs(reduced.resized((32, 32)) - reference).mean()
    whole = np.abs(resize(reduced.pixels, (32, 32)) - reference).mean()
    assert reduced.extent is not None
    flipped = np.abs(resize(reduced.pixels, (32, 32), replace(reduced.extent, bottom=False, right=False)) - reference).mean()
    assert exact < 1.0 < 2 * exact < min(whole, flipped)


def test_a_truncated_jpeg_still_fails_when_decoded_reduced() -> None:
    data = jpeg_bytes(synthetic(2))
    with pytest.raises(ImageProblem) as caught:
        decode(data[: len(data) // 2], channels=3, max_pixels=LIMIT, name="cut.jpg", size=(32, 32))
    assert caught.value.reason == images.TRUNCATED and "cut.jpg" in caught.value.detail


def test_an_image_problem_survives_a_worker_process_intact() -> None:
    again = pickle.loads(pickle.dumps(ImageProblem(images.TRUNCATED, "a/b.jpg: image file is truncated")))
    assert (again.reason, again.detail) == (images.TRUNCATED, "a/b.jpg: image file is truncated")


def test_pixel_stats_keep_their_definition() -> None:
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        pixels = (rng.random((50, 70, channels)) * 255).astype(np.uint8)
        values = pixels.astype(np.float64) / 255.0
        grey = values.mean(axis=2)
        stats = pixel_stats(pixels)
        assert stats["brightness"] == pytest.approx(grey.mean(), abs=1e-7) and stats["contrast"] == pytest.approx(grey.std(), abs=1e-7)
        assert stats["std_c0"] == pytest.approx(values[:, :, 0].std(), abs=1e-7)
        assert (stats["mean_c2"] is None) == (channels == 1)


# -- one decode per file; the cache's identity ---------------------------------------------------


def test_each_file_is_decoded_once_for_ingest_and_the_decoded_cache(tmp_path: Path, home: Path, in_process: None, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = listing_of(tmp_path / "data", [synthetic(i) for i in range(6)])
    calls: list[int] = []
    original = images.decode

    def counted(*args: object, **kwargs: object) -> images.Decoded:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "decode", counted)
    manifest = scan_images(listing, channels=3, max_pixels=LIMIT, size=(32, 32))
    cache = build_cache(items_of(manifest), listing.root, data_digest="d", size=(32, 32), channels=3, max_pixels=LIMIT)
    assert len(calls) == 6  # before: 12 (ingest decoded every file, then the cache decoded it again)
    for folder in (home / "cache" / "pixels").iterdir():  # without the pixel store (another machine) the cache decodes, to the same pixels
        for file in folder.iterdir():
            file.unlink()
    again = build_cache(items_of(manifest), listing.root, data_digest="e", size=(32, 32), channels=3, max_pixels=LIMIT)
    assert len(calls) == 12
    assert np.array_equal(cache.images(), again.images())
    direct = [decode((listing.root / p).read_bytes(), channels=3, max_pixels=LIMIT, size=(32, 32)).resized((32, 32)) for p in manifest["path"]]
    assert np.array_equal(cache.images(), np.stack(direct))


def test_the_decoded_cache_key_names_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache built before reduced decoding (its key had no decoder) holds other pixels: never reuse it.
    before = short_hash({"layout": 1, "digest": "d", "size": [32, 32], "channels": 3}, 20)
    now = cache_key("d", (32, 32), 3)
    assert now != before
    monkeypatch.setattr(decoded_cache, "DECODER_VERSION", images.DECODER_VERSION + 1)
    assert cache_key("d", (32, 32), 3) != now


def test_hash_cache_rows_decoded_another_way_are_scanned_again(tmp_path: Path, home: Path, in_process: None) -> None:
    listing = listing_of(tmp_path / "data", [synthetic(i) for i in range(3)])
    hashes = tmp_path / "hashes.parquet"
    scan_images(listing, channels=3, max_pixels=LIMIT, cache_file=hashes, size=(32, 32))
    frame = pd.read_parquet(hashes)
    assert set(frame["decoder"]) == {f"{images.DECODER_VERSION}/64"}
    frame.assign(brightness=-1.0).to_parquet(hashes)
    assert (scan_images(listing, channels=3, max_pixels=LIMIT, cache_file=hashes, size=(32, 32))["brightness"] == -1.0).all()  # a hit
    assert (scan_images(listing, channels=3, max_pixels=LIMIT, cache_file=hashes, size=(128, 128))["brightness"] > 0).all()  # rescanned
    frame.drop(columns=["decoder"]).assign(brightness=-1.0).to_parquet(hashes)  # as trainwise wrote it before
    assert (scan_images(listing, channels=3, max_pixels=LIMIT, cache_file=hashes, size=(32, 32))["brightness"] > 0).all()


def test_the_cache_refuses_a_file_changed_since_ingest(tmp_path: Path, home: Path, in_process: None) -> None:
    listing = listing_of(tmp_path / "data", [synthetic(i) for i in range(3)])
    items = items_of(scan_images(listing, channels=3, max_pixels=LIMIT))  # no size: nothing kept, the cache decodes
    (listing.root / "a" / "001.jpg").write_bytes(jpeg_bytes(synthetic(9)))
    with pytest.raises(DataError, match=r"001\.jpg: its content is not what ingest hashed"):
        build_cache(items, listing.root, data_digest="d", size=(32, 32), channels=3, max_pixels=LIMIT)


# -- worker processes ------------------------------------------------------------------------------


def where(item: int) -> tuple[int, int]:
    return item, os.getpid()


def test_small_jobs_stay_in_this_process_and_large_ones_keep_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    small = list(parallel.map_files(where, list(range(300)), desc="t"))
    assert [i for i, _ in small] == list(range(300)) and {pid for _, pid in small} == {os.getpid()}
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_S", 0.0)
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_WARM_S", 0.0)
    monkeypatch.setattr(parallel, "PROBE_ITEMS", 4)
    large = list(parallel.map_files(where, list(range(300)), desc="t", workers=2))
    assert [i for i, _ in large] == list(range(300))
    assert {pid for _, pid in large[:4]} == {os.getpid()} and os.getpid() not in {pid for _, pid in large[4:]}


def test_scans_in_workers_and_in_process_agree_and_quarantine_the_corrupt_file(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = listing_of(tmp_path / "data", [synthetic(i, 120, 90) for i in range(40)])
    bad = listing.records[23].path
    bad.write_bytes(bad.read_bytes()[:900])
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_S", float("inf"))
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_WARM_S", float("inf"))
    serial = scan_images(listing, channels=3, max_pixels=LIMIT, size=(16, 16))
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_S", 0.0)
    monkeypatch.setattr(parallel, "PARALLEL_AFTER_WARM_S", 0.0)
    monkeypatch.setattr(parallel, "PROBE_ITEMS", 4)
    workers = scan_images(listing, channels=3, max_pixels=LIMIT, size=(16, 16))
    pd.testing.assert_frame_equal(serial, workers)
    row = workers.set_index("path").loc["a/023.jpg"]
    assert row["status"] == QUARANTINED and row["reason"] == images.TRUNCATED and "023.jpg" in row["detail"]


def test_a_corrupt_file_in_a_cache_built_by_workers_is_named(tmp_path: Path, home: Path, in_workers: None) -> None:
    listing = listing_of(tmp_path / "data", [synthetic(i, 120, 90) for i in range(40)])
    items = items_of(scan_images(listing, channels=3, max_pixels=LIMIT)).drop(columns=["sha256"])
    bad = listing.records[31].path
    bad.write_bytes(bad.read_bytes()[:900])
    with pytest.raises(DataError, match=r"031\.jpg: .*truncated"):
        build_cache(items, listing.root, data_digest="d", size=(16, 16), channels=3, max_pixels=LIMIT)
    assert not list((home / "cache" / "decoded").iterdir())  # nothing half-built is left to be found
