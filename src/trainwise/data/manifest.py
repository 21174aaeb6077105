"""The manifest: one row per image with its hashes, size, mode and whether it is usable.

Built by one pass over the files (read once: hash and decode together), in threads because
Pillow's decoders release the GIL. A per-file cache keyed by path, size, mtime, ctime and inode
(data/content.py: a rewrite that keeps size and mtime still changes ctime) makes a repeated ingest
of unchanged data read nothing again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from trainwise.data.content import Stat, file_stat
from trainwise.data.duplicates import duplicate_groups, exact_groups, signature
from trainwise.data.images import UNREADABLE, ImageProblem, read_image
from trainwise.data.records import ImageListing, ImageRecord

log = logging.getLogger(__name__)

OK, QUARANTINED = "ok", "quarantined"
# brightness and contrast: mean and std of the grey image; mean_c*/std_c*: per converted channel,
# all on 0..1. Recorded during the one decode pass so explore and sample never decode for them.
PIXEL_STATS = ["brightness", "contrast", "mean_c0", "mean_c1", "mean_c2", "std_c0", "std_c1", "std_c2"]
MANIFEST_COLUMNS = [
    "id", "path", "label", "split", "sha256", "dhash", "width", "height", "channels", "mode", "bytes", "format",
    *PIXEL_STATS, "status", "reason", "detail",
]  # fmt: skip
# The near-duplicate signature (data/duplicates.py) travels with the scan and its cache but is
# not part of the logged manifest: add_duplicate_groups consumes it.
SIGNATURE = "signature"
_SCAN_FIELDS = [*MANIFEST_COLUMNS[4:], SIGNATURE]


def scan_images(listing: ImageListing, *, channels: int, max_pixels: int, cache_file: Path | None = None) -> pd.DataFrame:
    """Hash and check every listed image; returns the manifest (usable and quarantined rows)."""
    cached = _load_cache(cache_file)
    stats = [_stat(r.path) for r in listing.records]
    rows: list[dict | None] = [None] * len(listing.records)
    todo = []
    for i, (record, stat) in enumerate(zip(listing.records, stats, strict=True)):
        hit = cached.get((record.relpath, *stat))
        if hit is not None:
            rows[i] = {**_identity(record), **hit}
        else:
            todo.append(i)
    if todo:
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(lambda i: _scan_one(listing.records[i], channels, max_pixels), todo)
            for i, row in tqdm(zip(todo, results, strict=True), total=len(todo), desc="ingest", unit="img", mininterval=1.0):
                rows[i] = row
    log.info("scanned %d images (%d from the hash cache)", len(rows), len(rows) - len(todo))
    manifest = pd.DataFrame([r for r in rows if r is not None], columns=[*MANIFEST_COLUMNS, SIGNATURE])
    rejected = [
        {"id": Path(relpath).stem, "path": relpath, "label": None, "split": None, "status": QUARANTINED, "reason": reason, "detail": detail}
        for relpath, reason, detail in listing.rejected
    ]
    if rejected:
        manifest = pd.concat([manifest, pd.DataFrame(rejected, columns=[*MANIFEST_COLUMNS, SIGNATURE])], ignore_index=True)
    if cache_file is not None:
        _save_cache(cache_file, listing.records, stats, rows)
    return manifest


def _identity(record: ImageRecord) -> dict:
    return {"id": record.id, "path": record.relpath, "label": record.label, "split": record.split}


def _scan_one(record: ImageRecord, channels: int, max_pixels: int) -> dict:
    row = _identity(record)
    try:
        pixels, info = read_image(record.path, channels=channels, max_pixels=max_pixels)
    except ImageProblem as problem:
        return _quarantined(row, record, problem.reason, problem.detail)
    except Exception as exc:  # decoders raise many types on corrupt input; one file must not end the ingest
        log.debug("unexpected error reading %s", record.path, exc_info=True)
        return _quarantined(row, record, UNREADABLE, f"{record.relpath}: {type(exc).__name__}: {exc}")
    return {
        **row, "sha256": info.sha256, "dhash": info.dhash, "width": info.width, "height": info.height,
        "channels": info.channels, "mode": info.mode, "bytes": info.bytes, "format": info.format,
        **pixel_stats(pixels), "status": OK, "reason": None, "detail": None, SIGNATURE: signature(pixels),
    }  # fmt: skip


def pixel_stats(pixels: np.ndarray) -> dict[str, float | None]:
    """Brightness, contrast and per-channel mean/std of a (H, W, C) uint8 image, on 0..1."""
    values = pixels.astype(np.float32) / 255.0
    grey = values.mean(axis=2)
    stats: dict[str, float | None] = {"brightness": float(grey.mean()), "contrast": float(grey.std())}
    for c in range(3):
        inside = c < values.shape[2]
        stats[f"mean_c{c}"] = float(values[:, :, c].mean()) if inside else None
        stats[f"std_c{c}"] = float(values[:, :, c].std()) if inside else None
    return stats


def _quarantined(row: dict, record: ImageRecord, reason: str, detail: str) -> dict:
    size = record.path.stat().st_size if record.path.exists() else 0
    return {**row, "bytes": size, "status": QUARANTINED, "reason": reason, "detail": detail}


def _stat(path: Path) -> Stat:
    return file_stat(path) or (-1, -1, -1, -1)


def _load_cache(cache_file: Path | None) -> dict[tuple[str, int, int, int, int], dict]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        frame = pd.read_parquet(cache_file)
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable hash cache %s (%s)", cache_file, exc)
        return {}
    frame = frame.astype(object).where(frame.notna(), None)
    return {
        (row["path"], int(row["size"]), int(row["mtime_ns"]), int(row["ctime_ns"]), int(row["inode"])): {k: row[k] for k in _SCAN_FIELDS}
        for row in frame.to_dict("records")
        # A cache from before ctime was kept cannot tell a rewrite, and one from before signatures
        # cannot verify near duplicates: rescan those files rather than group them without.
        if "ctime_ns" in row and (row.get(SIGNATURE) is not None or row.get("status") != OK)
    }


def _save_cache(cache_file: Path, records: list[ImageRecord], stats: list[Stat], rows: list[dict | None]) -> None:
    entries = [
        {"path": r.relpath, "size": size, "mtime_ns": mtime, "ctime_ns": ctime, "inode": inode, **{k: row.get(k) for k in _SCAN_FIELDS}}
        for r, (size, mtime, ctime, inode), row in zip(records, stats, rows, strict=True)
        if row is not None and size >= 0
    ]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    frame = pd.DataFrame(entries).astype({"width": "Int64", "height": "Int64", "channels": "Int64", "bytes": "Int64"})
    frame.astype({column: "Float64" for column in PIXEL_STATS}).to_parquet(tmp)
    tmp.replace(cache_file)


def add_duplicate_groups(manifest: pd.DataFrame, min_similarity: float) -> pd.DataFrame:
    """Columns dup_group (exact and verified near duplicates), exact_dup and near_dup (usable rows only).

    Consumes the scan's signature column: the manifest that is returned and logged has none.
    """
    manifest = manifest.copy()
    usable = manifest["status"] == OK
    part = manifest[usable]
    signatures = list(part[SIGNATURE]) if SIGNATURE in part else None
    sizes = list(zip(part["width"].astype(int), part["height"].astype(int), strict=True))
    groups = duplicate_groups(list(part["sha256"]), signatures, sizes, min_similarity=min_similarity)
    exact = exact_groups(list(part["sha256"]))
    index = part.index.to_numpy()
    manifest["dup_group"] = pd.array([pd.NA] * len(manifest), dtype="Int64")
    manifest.loc[index, "dup_group"] = index[groups]
    exact_sizes = pd.Series(exact).map(pd.Series(exact).value_counts()).to_numpy()
    # near_dup: the item's group holds another file with different bytes (an exact copy may be both).
    distinct = pd.Series(part["sha256"].to_numpy()).groupby(groups).transform("nunique").to_numpy()
    manifest["exact_dup"] = False
    manifest["near_dup"] = False
    manifest.loc[index, "exact_dup"] = exact_sizes > 1
    manifest.loc[index, "near_dup"] = distinct > 1
    return manifest.drop(columns=[SIGNATURE], errors="ignore")


def duplicate_report(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group: its size, members, labels and whether the labels conflict.

    Exact copies (one sha256) are always rows of their own, kind "exact", even where they also
    belong to a near-duplicate group; a "near" row lists a group of files with different bytes.
    """
    usable = manifest.dropna(subset=["dup_group"])
    rows = []
    for kind, key in (("exact", "sha256"), ("near", "dup_group")):
        for _, members in usable.groupby(key, sort=False):
            if len(members) < 2 or (kind == "near" and members["sha256"].nunique() < 2):
                continue
            labels = sorted({str(x) for x in members["label"].dropna()})
            rows.append({
                "group": int(members["dup_group"].iloc[0]),
                "size": len(members),
                "kind": kind,
                "labels": "|".join(labels),
                "conflicting_labels": len(labels) > 1,
                "paths": "|".join(members["path"]),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["group", "size", "kind", "labels", "conflicting_labels", "paths"])


def data_digest(rows: Iterable[tuple[str, ...]]) -> str:
    """A content digest over sorted (path, sha256, label, split) rows: 32 hex digits (MLflow allows 36)."""
    digest = hashlib.sha256()
    for row in sorted(tuple("" if v is None else str(v) for v in r) for r in rows):
        digest.update("\0".join(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]
