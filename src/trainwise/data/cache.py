"""The decoded cache: every usable image decoded once, resized, stored as one uint8 array on disk.

Training reads batches from this memory-mapped (N, H, W, C) array by index, so no epoch decodes a
file again. The folder is keyed by the data digest, the preparation settings (size, channels) and
the decoder version (data/images.py: a cache decoded another way, such as before reduced JPEG
decoding, is never reused), built beside its final name and renamed into place, so a half-written
cache is never used. Steps record only its key; each machine finds (or rebuilds) the folder for a
key itself.

Pixels come from the pixel store when ingest decoded the file on this machine (data/pixel_store.py),
else from decoding the file here the same way, in worker processes when there are many.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trainwise.data.images import DECODER_VERSION, UNREADABLE, ImageProblem, read_decoded
from trainwise.data.parallel import map_files
from trainwise.data.pixel_store import find_pixels
from trainwise.errors import DataError
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash

log = logging.getLogger(__name__)

_LAYOUT = 1
CHANGED = "changed_since_ingest"
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
    parts = {"layout": _LAYOUT, "digest": data_digest, "size": list(size), "channels": channels, "decoder": DECODER_VERSION}
    return short_hash(parts, 20)


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
    """Decode `items` (columns id, path relative to `root`, label, split; sha256 when known) into the cache, or reuse it."""
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
    stored = find_pixels(size, channels, list(items["sha256"])) if "sha256" in items else {}
    for row, pixels in stored.items():
        array[row] = pixels
    todo = [i for i in range(len(items)) if i not in stored]
    digests = list(items["sha256"]) if "sha256" in items else [None] * len(items)
    jobs = [(root / items["path"].iloc[i], digests[i], channels, max_pixels, size) for i in todo]
    try:
        for i, pixels in zip(todo, map_files(decode_one, jobs, desc="decode cache"), strict=True):
            array[i] = pixels
    except ImageProblem as problem:  # it passed ingest, so it changed since (or the disk fails)
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot decode {problem.detail} [{problem.reason}] for the decoded cache; it was usable at ingest: "
                        "has it changed since? Rerun ingest (trainwise ingest --force)") from None  # fmt: skip
    log.info("decoded cache %s: %d images from ingest's pixel store, %d decoded", key, len(stored), len(todo))
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


def decode_one(job: tuple[Path, str | None, int, int, tuple[int, int]]) -> np.ndarray:
    """One file's pixels at `size`, decoded as ingest decodes them (runs in workers).

    An ImageProblem naming the file when it cannot be decoded, or when its bytes are no longer those
    ingest hashed (`sha256`): the cache must hold the pixels of the data its key names.
    """
    path, sha256, channels, max_pixels, size = job
    try:
        decoded = read_decoded(path, channels=channels, max_pixels=max_pixels, size=size)
    except ImageProblem:
        raise
    except Exception as exc:  # decoders raise many types on corrupt input: name the file
        raise ImageProblem(UNREADABLE, f"{path}: {type(exc).__name__}: {exc}") from exc
    if sha256 is not None and decoded.info.sha256 != sha256:
        raise ImageProblem(CHANGED, f"{path}: its content is not what ingest hashed (sha256 {decoded.info.sha256[:12]}..., ingest {sha256[:12]}...)")
    return decoded.resized(size)


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
