"""Data benchmarks, measured side by side in one run; prints ratios, asserts nothing.

1. An epoch read from the decoded cache (memory-mapped uint8, batches by index) vs decoding and
   resizing every file each epoch, on the same images, interleaved, median of several epochs.
   Target: the cache at least 10x faster.
2. Ingest throughput: files/s for a first scan (read, hash, decode) and a repeat scan (hash cache).

    .venv/bin/python bench/bench_data.py [--images 3000] [--size 32] [--epochs 5]

The images are scikit-learn's digits, upscaled and noised to --size pixels and saved as PNG, so
the files decode like real small images.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(folder: Path, count: int, size: int) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for i in range(count):
        index = i % len(digits.images)
        base = np.kron(digits.images[index] / 16.0, np.ones((size // 8, size // 8)))
        noisy = np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1)
        rgb = (np.stack([noisy, noisy * 0.8, 1 - noisy], axis=-1) * 255).astype(np.uint8)
        target = folder / str(digits.target[index])
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(target / f"{i:05d}.png")


def epoch_decoding(paths: list[Path], size: int, batch: int, rng: np.random.Generator) -> float:
    from trainwise.data.images import read_image, resize

    started = time.perf_counter()
    order = rng.permutation(len(paths))
    for start in range(0, len(order), batch):
        pixels = [resize(read_image(paths[i], channels=3, max_pixels=10**8)[0], (size, size)) for i in order[start : start + batch]]
        torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    return time.perf_counter() - started


def epoch_cache(images: np.ndarray, batch: int, rng: np.random.Generator) -> float:
    started = time.perf_counter()
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch):
        torch.from_numpy(images[np.sort(order[start : start + batch])]).permute(0, 3, 1, 2)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRAINWISE_HOME"] = str(Path(tmp) / "home")
        from trainwise.data.cache import build_cache
        from trainwise.data.manifest import scan_images
        from trainwise.data.records import _list_folder

        root = Path(tmp) / "data"
        make_images(root, args.images, args.size)
        listing = _list_folder(root, None, (".png",), root=root)

        started = time.perf_counter()
        manifest = scan_images(listing, channels=3, max_pixels=10**8, cache_file=Path(tmp) / "hashes.parquet")
        first_scan = time.perf_counter() - started
        started = time.perf_counter()
        scan_images(listing, channels=3, max_pixels=10**8, cache_file=Path(tmp) / "hashes.parquet")
        repeat_scan = time.perf_counter() - started

        started = time.perf_counter()
        cache = build_cache(manifest[["id", "path", "label", "split"]], root, data_digest="bench", size=(args.size, args.size), channels=3, max_pixels=10**8)
        build_time = time.perf_counter() - started
        images = cache.images()
        paths = [root / p for p in manifest["path"]]

        rng = np.random.default_rng(0)
        decoding, cached = [], []
        for _ in range(args.epochs):  # interleaved, so drift in machine load hits both alike
            decoding.append(epoch_decoding(paths, args.size, args.batch, rng))
            cached.append(epoch_cache(images, args.batch, rng))

    n = args.images
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{n} PNG images, {args.size}x{args.size} RGB, batch {args.batch}, median of {args.epochs} interleaved epochs")
    print(f"ingest, first scan (read+hash+decode): {first_scan:7.2f} s  {n / first_scan:9.0f} files/s")
    print(f"ingest, repeat scan (hash cache):      {repeat_scan:7.2f} s  {n / repeat_scan:9.0f} files/s  ({first_scan / repeat_scan:.1f}x faster)")
    print(f"decoded cache build (once):            {build_time:7.2f} s")
    median_decode, median_cache = statistics.median(decoding), statistics.median(cached)
    print(f"epoch, decoding every file:            {median_decode:7.3f} s  {n / median_decode:9.0f} images/s")
    print(f"epoch, decoded cache:                  {median_cache:7.3f} s  {n / median_cache:9.0f} images/s")
    ratio = median_decode / median_cache
    print(f"ratio cache vs decoding: {ratio:.1f}x faster (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
