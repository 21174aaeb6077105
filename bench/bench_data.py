"""Data benchmarks, measured side by side in one run; prints ratios, asserts nothing.

1. An epoch read from the decoded cache (memory-mapped uint8, batches by index) vs decoding and
   resizing every file each epoch, on the same images, interleaved, median of several epochs.
   Target: the cache at least 10x faster.
2. Ingest throughput: files/s for a first scan (read, hash, decode) and a repeat scan (hash cache).
3. Photos (issue 10 §4): ingest + prepare's decoded cache, from files to the (N, 32, 32, 3) cache,
   vs a plain `cv2.imread` + `cv2.resize` (area) loop over the same JPEGs, in alternating rounds,
   median of --rounds. Target: ingest+prepare at least 0.8x the plain loop's files/s. Each round
   starts from an empty TRAINWISE_HOME (no hash cache, pixel store or decoded cache). The worker
   server starts once per process (as in a `trainwise` command), so in the first round only.

    .venv/bin/python bench/bench_data.py [--images 3000] [--size 32] [--epochs 5] [--photos 3000] [--rounds 3]

The images of 1-2 are scikit-learn's digits, upscaled and noised to --size pixels and saved as PNG,
so the files decode like real small images. The photos of 3 are synthetic 400x533 JPEGs (quality
90, about 48 KB): smooth colour gradients, flat discs and boxes, and sensor-like noise.
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


def make_photos(folder: Path, count: int, height: int = 533, width: int = 400) -> None:
    import cv2

    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    noise = [rng.normal(0, 6, (height, width, 3)).astype(np.float32) for _ in range(8)]  # a bank: drawing it per image took 10 ms
    for i in range(count):
        freq, phase = rng.uniform(1, 6, 3), rng.uniform(0, 6, 3)
        image = np.stack([110 + 70 * np.sin(x * freq[c] + phase[c]) * np.cos(y * freq[(c + 1) % 3] + phase[c]) for c in range(3)], axis=-1)
        image = image.astype(np.uint8)
        for _ in range(rng.integers(3, 9)):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            corner = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            if rng.random() < 0.5:
                cv2.circle(image, corner, int(rng.integers(10, 90)), colour, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(image, corner, (corner[0] + int(rng.integers(20, 150)), corner[1] + int(rng.integers(20, 150))), colour, -1)
        pixels = np.clip(image + noise[i % len(noise)][:: rng.choice([-1, 1])], 0, 255).astype(np.uint8)
        target = folder / f"c{i % 10}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / f"{i:05d}.jpg", quality=90)


def plain_decode(paths: list[Path], size: int) -> float:
    """The floor to compare with: read, decode and shrink each file, nothing else, in one process."""
    import cv2

    started = time.perf_counter()
    for path in paths:
        cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (size, size), interpolation=cv2.INTER_AREA)
    return time.perf_counter() - started


def photos_benchmark(tmp: Path, count: int, size: int, rounds: int) -> None:
    from trainwise.data.cache import build_cache
    from trainwise.data.manifest import scan_images
    from trainwise.data.parallel import worker_count
    from trainwise.data.pixel_store import store_folder
    from trainwise.data.records import _list_folder

    root = tmp / "photos"
    make_photos(root, count)
    listing = _list_folder(root, None, (".jpg",), root=root)
    paths = [r.path for r in listing.records]
    plain, ingest, prepare = [], [], []
    for r in range(rounds):  # alternating, so drift in machine load hits both alike
        plain.append(plain_decode(paths, size))
        os.environ["TRAINWISE_HOME"] = str(tmp / f"photo-home-{r}")  # nothing cached from an earlier round
        started = time.perf_counter()
        manifest = scan_images(listing, channels=3, max_pixels=10**8, cache_file=tmp / f"photo-home-{r}" / "hashes.parquet", size=(size, size))
        ingest.append(time.perf_counter() - started)
        items = manifest[manifest["status"] == "ok"][["id", "path", "label", "split", "sha256"]]
        started = time.perf_counter()
        build_cache(items, root, data_digest=f"photos-{r}", size=(size, size), channels=3, max_pixels=10**8)
        prepare.append(time.perf_counter() - started)
    # Prepare on a machine that did not ingest (no pixel store): it decodes every file itself.
    for shard in store_folder((size, size), 3).iterdir():
        shard.unlink()
    started = time.perf_counter()
    build_cache(items, root, data_digest="photos-decoding", size=(size, size), channels=3, max_pixels=10**8)
    decoding = time.perf_counter() - started

    both = [a + b for a, b in zip(ingest, prepare, strict=True)]
    n, median_plain, median_both = count, statistics.median(plain), statistics.median(both)
    print(f"photos: {n} JPEGs 400x533 -> {size} px, {worker_count()} worker processes, median of {rounds} alternating rounds")
    print(f"plain cv2.imread + resize loop:        {median_plain:7.2f} s  {n / median_plain:9.0f} files/s")
    print(f"ingest (read+hash+decode+signature):   {statistics.median(ingest):7.2f} s  {n / statistics.median(ingest):9.0f} files/s")
    print(f"prepare, decoded cache (pixel store):  {statistics.median(prepare):7.2f} s  {n / statistics.median(prepare):9.0f} files/s")
    print(f"prepare, decoded cache (decoding):     {decoding:7.2f} s  {n / decoding:9.0f} files/s  (another machine: no pixel store)")
    print(f"ingest+prepare per round:              {', '.join(f'{t:.2f}' for t in both)} s (the first starts the worker server)")
    ratio = median_plain / median_both
    print(f"ingest+prepare/plain-decode throughput {ratio:.2f} x ({n} files, 400x533 JPEG -> {size} px; target >= 0.8x: {'met' if ratio >= 0.8 else 'NOT met'})")


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
    parser.add_argument("--photos", type=int, default=3000, help="synthetic 400x533 JPEGs for benchmark 3 (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of benchmark 3")
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
    if args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            photos_benchmark(Path(tmp), args.photos, args.size, args.rounds)


if __name__ == "__main__":
    main()
