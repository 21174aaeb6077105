"""Data sources: where a project's data lives, a quick look at it, and a cheap change fingerprint.

`peek` reads only what it must (folder listings, image headers, a table's rows) so step 1 answers
in seconds; `fingerprint` is the source's content digest (every file's sha256, read once and then
cached while the file is unchanged), so a step's key changes exactly when the data does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from trainwise.config import (
    DigitsSource,
    ImageCsvSource,
    ImageFolderSource,
    ProjectConfig,
    TabularSource,
    TorchvisionSource,
)
from trainwise.data.content import HashCache, tree_digest
from trainwise.data.digits import materialize_digits
from trainwise.data.tables import load_source_table, read_table
from trainwise.errors import DataError
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash

log = logging.getLogger(__name__)

_EXAMPLES_PER_CLASS = 2

# Split sizes and class names of the torchvision datasets, known without downloading them.
TORCHVISION_DATASETS: dict[str, dict[str, Any]] = {
    "MNIST": {"train": 60_000, "test": 10_000, "classes": [str(i) for i in range(10)], "shape": "28x28, 1 channel"},
    "FashionMNIST": {
        "train": 60_000,
        "test": 10_000,
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "shape": "28x28, 1 channel",
    },
    "CIFAR10": {
        "train": 50_000,
        "test": 10_000,
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "shape": "32x32, 3 channels",
    },
    "CIFAR100": {"train": 50_000, "test": 10_000, "classes": [f"class {i}" for i in range(100)], "shape": "32x32, 3 channels"},
}


@dataclass
class Peek:
    """What step 1 learns about a source without processing it."""

    kind: str
    location: str
    n_train: int | None
    n_test: int | None
    test_labelled: bool = False
    class_counts: dict[str, int] | None = None  # classification only
    columns: dict[str, str] | None = None  # tabular: column -> dtype
    missing: dict[str, int] | None = None  # tabular: column -> missing cells
    target_summary: dict[str, float] | None = None  # regression: min/mean/max/std
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.class_counts or {})

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}


def prepare_source(cfg: ProjectConfig) -> None:
    """Make the source exist where it is generated locally (the embedded digits folder)."""
    source = cfg.data.source
    if isinstance(source, DigitsSource):
        assert source.root is not None
        materialize_digits(source.root, test_fraction=source.test_fraction, seed=source.seed)


def peek(cfg: ProjectConfig) -> Peek:
    """A quick look at the project's data: counts, classes or columns, a few examples."""
    prepare_source(cfg)
    source = cfg.data.source
    if isinstance(source, DigitsSource):
        result = _peek_image_folder(source.train_dir, source.test_dir, kind="digits", extensions=(".png",))
        result.notes.append(f"test answers kept apart in {source.train_dir.parent / 'answers.csv'} for scoring submissions")
        return result
    if isinstance(source, ImageFolderSource):
        result = _peek_image_folder(source.root, source.test, kind="image_folder", extensions=source.extensions)
        if source.val is not None:
            n_val = _count_images(source.val, {e.lower() for e in source.extensions})
            result.notes.append(f"validation folder {source.val}: {n_val} images, the validation split (split.val is not used)")
        return result
    if isinstance(source, ImageCsvSource):
        return _peek_image_csv(source)
    if isinstance(source, TorchvisionSource):
        return _peek_torchvision(source)
    assert isinstance(source, TabularSource)
    return _peek_tabular(source, cfg.task.target, classification=cfg.task.is_classification)


def fingerprint(cfg: ProjectConfig) -> str:
    """The source's content digest: every file's sha256 with its path inside the source (data/content.py).

    Bundled scikit-learn tables are identified by name and scikit-learn's version (their content
    ships with it).
    """
    prepare_source(cfg)
    source = cfg.data.source
    if isinstance(source, TabularSource) and source.sklearn:
        from sklearn import __version__ as sklearn_version

        return short_hash(f"{source.kind}:sklearn:{source.sklearn}:{sklearn_version}", 32)
    cache = HashCache(trainwise_home() / "cache" / "hashes" / "files.json")
    return short_hash([source.kind, tree_digest(_source_paths(source), cache)], 32)


def _source_paths(source: Any) -> list[tuple[str, Path]]:
    if isinstance(source, DigitsSource):
        assert source.root is not None
        return [("root", source.root)]
    if isinstance(source, ImageFolderSource):
        return [("root", source.root)] + [(name, folder) for name, folder in (("val", source.val), ("test", source.test)) if folder]
    if isinstance(source, ImageCsvSource):
        return [("csv", source.csv), ("images", source.images)] + ([("test_csv", source.test_csv)] if source.test_csv else [])
    if isinstance(source, TorchvisionSource):
        return [("root", source.root)]
    return [("path", source.path)] + ([("test_path", source.test_path)] if source.test_path else [])


# -- image folders ----------------------------------------------------------------------------------


def _peek_image_folder(root: Path, test: Path | None, *, kind: str, extensions: tuple[str, ...]) -> Peek:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder (data.source.root)")
    exts = {e.lower() for e in extensions}
    counts: dict[str, int] = {}
    examples: list[str] = []
    others = Counter[str]()
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders; expected one sub-folder of images per class ({root}/<class>/*.png)"
        )
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in exts)
        others.update(p.suffix.lower() or "(no extension)" for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() not in exts)
        counts[class_dir.name] = len(files)
        examples.extend(_describe_image(f, root) for f in files[:_EXAMPLES_PER_CLASS])
    result = Peek(
        kind=kind,
        location=str(root),
        n_train=sum(counts.values()),
        n_test=_count_images(test, exts) if test else None,
        class_counts=counts,
        examples=examples,
    )
    if loose:
        result.notes.append(f"{len(loose)} images directly in {root} belong to no class and will be ignored, e.g. {loose[0]}")
    if others:
        result.notes.append("files that are not images: " + ", ".join(f"{n} {ext}" for ext, n in others.most_common()))
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        result.notes.append(f"empty class folders: {', '.join(empty)}")
    if test is None:
        result.notes.append("no test folder: the prepare step holds out a labelled test split instead")
    return result


def _count_images(folder: Path, exts: set[str]) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _describe_image(path: Path, root: Path) -> str:
    name = path.relative_to(root).as_posix()
    try:
        with Image.open(path) as image:  # reads the header only
            return f"{name} ({image.width}x{image.height}, {image.mode})"
    except (UnidentifiedImageError, OSError) as exc:
        return f"{name} (unreadable: {exc})"


def _peek_image_csv(source: ImageCsvSource) -> Peek:
    table = read_table(source.csv)
    missing = [c for c in (source.path_column, source.label_column) if c not in table.columns]
    if missing:
        raise DataError(
            f"{source.csv}: no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, table.columns))}); "
            "set data.source.path_column / label_column"
        )
    counts = table[source.label_column].astype(str).value_counts().sort_index()
    examples = [str(p) for p in table[source.path_column].head(2 * _EXAMPLES_PER_CLASS)]
    n_test = len(read_table(source.test_csv)) if source.test_csv else None
    return Peek(
        kind="image_csv",
        location=f"{source.csv} (images in {source.images})",
        n_train=len(table),
        n_test=n_test,
        class_counts={str(k): int(v) for k, v in counts.items()},
        examples=examples,
    )


def _peek_torchvision(source: TorchvisionSource) -> Peek:
    known = TORCHVISION_DATASETS[source.name]
    local = source.root.exists() and any(p.is_file() for p in source.root.rglob("*"))
    peek_result = Peek(
        kind="torchvision",
        location=f"torchvision.datasets.{source.name} at {source.root}",
        n_train=known["train"],
        n_test=known["test"],
        test_labelled=True,
        class_counts={name: known["train"] // len(known["classes"]) for name in known["classes"]},
        examples=[known["shape"]],
    )
    if local:
        peek_result.notes.append(f"local copy found in {source.root}")
    elif source.download:
        peek_result.notes.append(f"no local copy in {source.root}: the ingest step downloads it (needs the internet)")
    else:
        raise DataError(
            f"no local copy of {source.name} in {source.root} and data.source.download is false; "
            f"put the dataset's files there or set data.source.download=true"
        )
    peek_result.notes.append("class counts are the dataset's published balanced counts")
    return peek_result


# -- tables -----------------------------------------------------------------------------------------


def _peek_tabular(source: TabularSource, target: str, *, classification: bool) -> Peek:
    table, location = load_source_table(source)
    if target not in table.columns:
        import difflib

        close = difflib.get_close_matches(target, [str(c) for c in table.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"{location}: no target column {target!r}{hint}; columns: {', '.join(map(str, table.columns))}. "
            "Set task.target to the column to predict."
        )
    result = Peek(
        kind="tabular",
        location=location,
        n_train=len(table),
        n_test=len(read_table(source.test_path)) if source.test_path else None,
        columns={str(c): str(t) for c, t in table.dtypes.items()},
        missing={str(c): int(n) for c, n in table.isna().sum().items() if n},
        examples=[table.head(3).to_csv(index=False)],
    )
    labels = table[target].dropna()
    if classification:
        result.class_counts = {str(k): int(v) for k, v in labels.astype(str).value_counts().sort_index().items()}
    else:
        numeric = pd.to_numeric(labels, errors="coerce")
        result.target_summary = {
            "min": float(numeric.min()),
            "mean": float(numeric.mean()),
            "max": float(numeric.max()),
            "std": float(numeric.std()),
        }
    return result
