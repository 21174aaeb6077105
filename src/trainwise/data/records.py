"""Every item of an image source: its id, file, label and whether it belongs to the provided test set.

All image sources end up as files on disk: folders are listed as they are, CSV listings are
resolved against their image folder, torchvision datasets are written once as PNG files into the
data cache (like the embedded digits). So ingest, the cache and the served model read one kind of
input, the same a user's own data takes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from trainwise.config import DigitsSource, ImageCsvSource, ImageFolderSource, ProjectConfig, TorchvisionSource
from trainwise.data.digits import materialize_digits
from trainwise.data.images import MISSING, NOT_AN_IMAGE
from trainwise.data.sources import TORCHVISION_DATASETS
from trainwise.data.tables import read_table
from trainwise.errors import DataError
from trainwise.paths import data_cache_dir

log = logging.getLogger(__name__)

TRAIN, VAL, TEST = "train", "val", "test"
POOL = (TRAIN, VAL)  # the labelled items the splits are made of; VAL: the user's own validation folder


@dataclass(frozen=True)
class ImageRecord:
    id: str  # unique; the submission id of a test item (its file stem by default)
    path: Path
    relpath: str  # relative to the listing's root: the manifest's `path` column
    label: str | None  # None: an unlabelled test item
    split: str  # TRAIN (the labelled pool), VAL (the provided validation set, also in the pool) or TEST (the provided test set)


@dataclass
class ImageListing:
    root: Path
    records: list[ImageRecord]
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath, reason, detail) found while listing
    test_labelled: bool = False

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records if r.split in POOL and r.label is not None})


def list_images(cfg: ProjectConfig) -> ImageListing:
    """List the source's items; structural problems (nested or empty class folders) are errors."""
    source = cfg.data.source
    if isinstance(source, DigitsSource):
        assert source.root is not None
        materialize_digits(source.root, test_fraction=source.test_fraction, seed=source.seed)
        listing = _list_folder(source.train_dir, source.test_dir, (".png",), root=source.root)
    elif isinstance(source, ImageFolderSource):
        inside = [f"data.source.{name} ({folder})" for name, folder in (("val", source.val), ("test", source.test))
                  if folder is not None and folder.is_relative_to(source.root)]  # fmt: skip
        if inside:
            raise DataError(
                f"{' and '.join(inside)} lies inside data.source.root ({source.root}), so it would be read as a class too; "
                "put train, val and test side by side (data/train, data/val, data/test)"
            )
        root = _common_root(source.root, *(folder for folder in (source.val, source.test) if folder is not None))
        listing = _list_folder(source.root, source.test, source.extensions, root=root, val_dir=source.val)
    elif isinstance(source, ImageCsvSource):
        listing = _list_csv(source)
    elif isinstance(source, TorchvisionSource):
        listing = _list_csv(materialize_torchvision(source))
    else:
        raise DataError(f"data.source.kind {source.kind!r} is not an image source")
    _check_classes(listing, cfg)
    return listing


# -- folders ----------------------------------------------------------------------------------------


def _list_folder(train_dir: Path, test_dir: Path | None, extensions: tuple[str, ...], *, root: Path, val_dir: Path | None = None) -> ImageListing:
    exts = {e.lower() for e in extensions}
    listing = ImageListing(root, [])
    _list_classes(listing, train_dir, exts, split=TRAIN)
    if val_dir is not None:
        _list_classes(listing, val_dir, exts, split=VAL)
    if test_dir is not None and test_dir.is_dir():
        test_classes = [p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        listing.test_labelled = bool(test_classes)
        for path in sorted(test_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                label = path.parent.name if listing.test_labelled and path.parent != test_dir else None
                _add(listing, path, root, exts, label=label, split=TEST)
    return listing


def _list_classes(listing: ImageListing, folder: Path, exts: set[str], *, split: str) -> None:
    """One flat sub-folder of images per class (the training folder, or a provided validation folder)."""
    train_dir, root = folder, listing.root
    class_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{train_dir} has no class folders; expected one folder of images per class ({train_dir}/<class>/*.png)")
    nested = [f"{d.name}/{sub.name}" for d in class_dirs for sub in d.iterdir() if sub.is_dir() and not sub.name.startswith(".")]
    if nested:
        raise DataError(
            f"nested folders inside class folders of {train_dir}: {', '.join(nested[:5])}"
            f"{' ...' if len(nested) > 5 else ''}. Each class must be one flat folder of images; "
            "move the images up or make each sub-folder a class of its own."
        )
    empty = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            empty.append(class_dir.name)
        for path in files:
            _add(listing, path, root, exts, label=class_dir.name, split=split)
    if empty:
        raise DataError(f"empty class folders in {train_dir}: {', '.join(empty)}. Add images or remove the folders.")


def _add(listing: ImageListing, path: Path, root: Path, exts: set[str], *, label: str | None, split: str) -> None:
    relpath = path.relative_to(root).as_posix()
    if path.suffix.lower() not in exts:
        listing.rejected.append((relpath, NOT_AN_IMAGE, f"extension {path.suffix or '(none)'} is not an image type"))
        return
    record_id = path.stem if split == TEST else relpath.rsplit(".", 1)[0]
    listing.records.append(ImageRecord(record_id, path, relpath, label, split))


def _common_root(first: Path, *others: Path) -> Path:
    """The deepest folder holding all of them (the first itself when alone)."""
    parts: list[str] = []
    for position, part in enumerate(first.parts):
        if any(len(other.parts) <= position or other.parts[position] != part for other in others):
            break
        parts.append(part)
    return Path(*parts) if parts else Path("/")


# -- CSV listings -----------------------------------------------------------------------------------


def _list_csv(source: ImageCsvSource) -> ImageListing:
    listing = ImageListing(source.images, [])
    for csv_path, split in ((source.csv, TRAIN), (source.test_csv, TEST)):
        if csv_path is None:
            continue
        table = read_table(csv_path)
        if source.path_column not in table.columns:
            raise DataError(
                f"{csv_path}: no column {source.path_column!r} (columns: {', '.join(map(str, table.columns))}); "
                "set data.source.path_column"
            )
        has_labels = source.label_column in table.columns
        if split == TRAIN and not has_labels:
            raise DataError(
                f"{csv_path}: no label column {source.label_column!r} (columns: {', '.join(map(str, table.columns))}); "
                "set data.source.label_column"
            )
        if split == TEST:
            listing.test_labelled = has_labels
        for row_number, row in enumerate(table.itertuples(index=False), start=2):
            values = dict(zip(table.columns, row, strict=True))
            name = str(values[source.path_column])
            if not Path(name).suffix:
                name += source.id_extension
            path = source.images / name
            label = values.get(source.label_column) if has_labels else None
            label = None if label is None or (isinstance(label, float) and np.isnan(label)) else str(label)
            if not path.is_file():
                listing.rejected.append((name, MISSING, f"{csv_path.name} line {row_number} lists {path}, which does not exist"))
                continue
            record_id = Path(name).stem if split == TEST else Path(name).with_suffix("").as_posix()
            listing.records.append(ImageRecord(record_id, path, name, label, split))
    return listing


def _check_classes(listing: ImageListing, cfg: ProjectConfig) -> None:
    train_classes = set(listing.classes)
    if not train_classes:
        raise DataError(f"no labelled images found under {listing.root}")
    if len(train_classes) == 1:
        raise DataError(
            f"only one class ({next(iter(train_classes))!r}) in {listing.root}: a classifier needs at least two. "
            "Check the folder layout (one folder per class) or the label column."
        )
    train_only = {r.label for r in listing.records if r.split == TRAIN}
    val_only = sorted({r.label for r in listing.records if r.split == VAL} - train_only)
    if val_only:
        raise DataError(
            f"classes present only in the validation folder: {', '.join(val_only)}; the model could never learn them. "
            "Add their images to the training folder, or remove them from the validation folder"
        )
    test_only = sorted({r.label for r in listing.records if r.split == TEST and r.label is not None} - train_classes)
    if test_only:
        raise DataError(f"classes present only in the test set: {', '.join(test_only)}; the model could never predict them")
    duplicates = _duplicate_ids(listing.records)
    if duplicates:
        raise DataError(f"ids used by more than one image: {', '.join(duplicates[:5])}; ids must be unique")


def _duplicate_ids(records: list[ImageRecord]) -> list[str]:
    seen: set[tuple[str, str]] = set()
    repeated = []
    for record in records:
        key = (record.split, record.id)
        if key in seen:
            repeated.append(record.id)
        seen.add(key)
    return repeated


# -- torchvision datasets ---------------------------------------------------------------------------

_IDX_FILES = {
    TRAIN: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    TEST: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def materialize_torchvision(source: TorchvisionSource) -> ImageCsvSource:
    """Write a torchvision dataset once as PNG files plus train/test CSVs; return it as a CSV source."""
    out = data_cache_dir() / "torchvision" / f"{source.name}"
    marker = out / ".complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("root") == str(source.root):
        return _csv_source(out)
    splits = _load_arrays(source)
    classes = TORCHVISION_DATASETS[source.name]["classes"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for split, (images, labels) in splits.items():
        rows = []
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            name = f"{split}_{index:05d}.png"
            Image.fromarray(pixels).save(tmp / "images" / name, compress_level=1)
            rows.append((name, classes[int(label)]))
        pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp / f"{split}.csv", index=False)
    (tmp / ".complete.json").write_text(json.dumps({"root": str(source.root)}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("wrote %s as PNG files to %s", source.name, out)
    return _csv_source(out)


def _csv_source(folder: Path) -> ImageCsvSource:
    return ImageCsvSource(kind="image_csv", csv=folder / "train.csv", images=folder / "images", test_csv=folder / "test.csv")


def _load_arrays(source: TorchvisionSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(images uint8 N,H,W[,C], labels) per split: raw IDX files when present, else torchvision."""
    # A read-only root (a system package's folder) cannot take a download: fetch into the data cache.
    roots = [source.root]
    if source.download and not _writable(source.root):
        roots.append(data_cache_dir() / "downloads" / source.name)
    if source.name in ("MNIST", "FashionMNIST"):
        for root in roots:
            if (found := _find_idx(root)) is not None:
                return found
    try:
        from torchvision import datasets

        dataset_class = getattr(datasets, source.name)
        loaded = {split: dataset_class(str(roots[-1]), train=split == TRAIN, download=source.download) for split in (TRAIN, TEST)}
    except (RuntimeError, OSError) as exc:
        where = {
            "MNIST": "the four *-idx?-ubyte(.gz) files",
            "FashionMNIST": "the four *-idx?-ubyte(.gz) files (Debian: apt install dataset-fashion-mnist)",
            "CIFAR10": "the extracted cifar-10-batches-py folder",
            "CIFAR100": "the extracted cifar-100-python folder",
        }[source.name]
        action = "could not be downloaded" if source.download else "has no local copy and data.source.download is false"
        raise DataError(f"{source.name} {action} ({exc}). Put {where} under {source.root} (data.source.root).") from None
    return {split: (np.asarray(ds.data), np.asarray(ds.targets)) for split, ds in loaded.items()}


def _writable(folder: Path) -> bool:
    """True when `folder` (or, when it does not exist yet, its nearest existing parent) takes new files."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return existing is not None and os.access(existing, os.W_OK)


def _find_idx(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    if not root.is_dir():
        return None
    result = {}
    for split, (images_name, labels_name) in _IDX_FILES.items():
        images = _first(root, images_name)
        labels = _first(root, labels_name)
        if images is None or labels is None:
            return None
        result[split] = (read_idx(images), read_idx(labels))
    return result


def _first(root: Path, stem: str) -> Path | None:
    matches = sorted(p for p in root.rglob(f"{stem}*") if p.is_file() and p.name in (stem, f"{stem}.gz"))
    return matches[0] if matches else None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzip-compressed or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    zero, dtype_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)
