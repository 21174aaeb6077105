"""The decoded cache: every usable image decoded once, resized, stored as one uint8 array on disk.

Training reads batches from this memory-mapped (N, H, W, C) array by index, so no epoch decodes a
file again. The folder is keyed by the data digest and the preparation settings (size, channels),
built beside its final name and renamed into place, so a half-written cache is never used. Steps
record only its key; each machine finds (or rebuilds) the folder for a key itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from trainwise.data.images import read_image, resize
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash

log = logging.getLogger(__name__)

_LAYOUT = 1
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.parquet"
INFO_FILE = "cache.json"


@dataclass(frozen=True)
class DecodedCache:
    folder: Path
    key: str

    @property
    def images_path(self) -> Path:
        return self.folder / IMAGES_FILE

    def images(self) -> np.ndarray:
        """The (N, H, W, C) uint8 array, memory-mapped read-only (pages load on first touch)."""
        return np.load(self.images_path, mmap_mode="r")

    def index(self) -> pd.DataFrame:
        """id, label and split of row i of images()."""
        return pd.read_parquet(self.folder / INDEX_FILE)

    def info(self) -> dict:
        return json.loads((self.folder / INFO_FILE).read_text())


def cache_key(data_digest: str, size: tuple[int, int], channels: int) -> str:
    return short_hash({"layout": _LAYOUT, "digest": data_digest, "size": list(size), "channels": channels}, 20)


def cache_folder(key: str) -> Path:
    """Where this machine keeps the decoded cache with `key` (never a path recorded by another machine)."""
    return trainwise_home() / "cache" / "decoded" / key


def find_cache(key: str) -> DecodedCache | None:
    """The local decoded cache with `key`, if this machine has built it."""
    cache = DecodedCache(cache_folder(key), key)
    return cache if (cache.folder / INFO_FILE).is_file() else None


def build_cache(
    items: pd.DataFrame, root: Path, *, data_digest: str, size: tuple[int, int], channels: int, max_pixels: int
) -> DecodedCache:
    """Decode `items` (columns id, path relative to `root`, label, split) into the cache, or reuse it."""
    key = cache_key(data_digest, size, channels)
    folder = cache_folder(key)
    if (folder / INFO_FILE).is_file():
        log.info("decoded cache %s already built (%d images)", key, json.loads((folder / INFO_FILE).read_text())["count"])
        return DecodedCache(folder, key)
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    height, width = size
    array = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(items), height, width, channels))
    paths = [root / p for p in items["path"]]

    def decode(i: int) -> None:
        pixels, _ = read_image(paths[i], channels=channels, max_pixels=max_pixels)
        array[i] = resize(pixels, size)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(decode, range(len(items))), total=len(items), desc="decode cache", unit="img", mininterval=1.0):
            pass
    array.flush()  # on disk before the folder is renamed into place
    items[["id", "label", "split"]].reset_index(drop=True).to_parquet(tmp / INDEX_FILE, index=False)
    info = {"key": key, "count": len(items), "size": [height, width], "channels": channels, "data_digest": data_digest}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    if folder.exists():  # another process finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(folder)
    log.info("decoded cache %s: %d images of %dx%dx%d", key, len(items), height, width, channels)
    return DecodedCache(folder, key)


def channel_stats(images: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) over the given rows, in chunks (the cache may not fit in RAM)."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(rows), chunk):
        block = images[np.sort(rows[start : start + chunk])].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        squares += (block**2).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 1e-12))
    return mean.tolist(), std.tolist()
