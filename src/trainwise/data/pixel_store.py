"""Resized pixels kept by content from ingest to prepare, so each file is decoded once.

Ingest decodes every new file once (hash, validation, statistics, near-duplicate signature); it
keeps that decode's pixels at the network's input size here, and prepare's decoded cache takes
them by sha256 instead of decoding the file again. Like the decoded cache this is a local cache of
this machine, never something a step's result depends on: keyed by content and by everything that
decides the pixels (decoder version, size, channels), and where a file's pixels are missing (another
machine, a cleaned cache, a hash-cache hit whose shard was removed) prepare decodes it the same way.

Each ingest that decodes files writes one shard: `<name>.npy` (rows of uint8 pixels), then
`<name>.parquet` (sha256 -> row), each renamed into place, the index last, so a reader never sees a
half-written shard. Disk: one copy of the decoded cache's size per input size (3 KB an image at 32x32x3).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd

from trainwise.data.images import DECODER_VERSION
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash

log = logging.getLogger(__name__)


def store_folder(size: tuple[int, int], channels: int) -> Path:
    key = short_hash({"decoder": DECODER_VERSION, "size": list(size), "channels": channels}, 16)
    return trainwise_home() / "cache" / "pixels" / key


def _index(folder: Path) -> pd.DataFrame:
    frames = []
    for index_file in sorted(folder.glob("*.parquet")):
        try:
            frames.append(pd.read_parquet(index_file).assign(shard=index_file.stem))
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable pixel-store index %s (%s)", index_file, exc)
    if not frames:
        return pd.DataFrame({"sha256": pd.Series(dtype=str), "row": pd.Series(dtype=np.int64), "shard": pd.Series(dtype=str)})
    return pd.concat(frames, ignore_index=True).drop_duplicates("sha256")


def find_pixels(size: tuple[int, int], channels: int, sha256: Sequence[str | None]) -> dict[int, np.ndarray]:
    """Position in `sha256` -> stored (height, width, channels) pixels, for the items the store holds."""
    folder = store_folder(size, channels)
    index = _index(folder)
    where = dict(zip(index["sha256"], zip(index["shard"], index["row"], strict=True), strict=True))
    found: dict[int, np.ndarray] = {}
    shards: dict[str, np.ndarray | None] = {}
    for position, digest in enumerate(sha256):
        if digest not in where:
            continue
        shard, row = where[digest]
        if shard not in shards:
            try:
                shards[shard] = np.load(folder / f"{shard}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                log.warning("ignoring the unreadable pixel-store shard %s (%s)", folder / f"{shard}.npy", exc)
                shards[shard] = None
        array = shards[shard]
        if array is not None and row < len(array) and array.shape[1:] == (*size, channels):
            found[position] = array[int(row)]
    return found


class ShardWriter:
    """Collects the pixels of one ingest's decodes into a new shard (use as a context manager)."""

    def __init__(self, size: tuple[int, int], channels: int, capacity: int) -> None:
        self.folder = store_folder(size, channels)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.known = set(_index(self.folder)["sha256"])  # already stored (by an earlier ingest): not again
        self.name = f"{uuid.uuid4().hex}"
        self._tmp = self.folder / f"{self.name}.npy.tmp-{os.getpid()}"
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.uint8, shape=(max(capacity, 1), *size, channels))
        self._rows: dict[str, int] = {}

    def add(self, sha256: str, pixels: np.ndarray) -> None:
        if sha256 in self.known or sha256 in self._rows:
            return
        row = len(self._rows)
        self._array[row] = pixels
        self._rows[sha256] = row

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._array.flush()
        del self._array
        if kind is not None or not self._rows:  # nothing new, or the scan failed: no shard
            self._tmp.unlink(missing_ok=True)
            return
        self._tmp.replace(self.folder / f"{self.name}.npy")
        tmp_index = self.folder / f"{self.name}.parquet.tmp-{os.getpid()}"
        pd.DataFrame({"sha256": list(self._rows), "row": list(self._rows.values())}).to_parquet(tmp_index, index=False)
        tmp_index.replace(self.folder / f"{self.name}.parquet")
        log.debug("pixel store %s: shard %s with %d images", self.folder.name, self.name, len(self._rows))
