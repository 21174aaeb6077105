"""Listing image sources: the folder layouts, CSV listings and torchvision copies users bring."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainwise.config import load_config
from trainwise.data.images import MISSING, NOT_AN_IMAGE
from trainwise.data.records import TEST, TRAIN, VAL, list_images, read_idx
from trainwise.data.sources import fingerprint
from trainwise.errors import DataError


def project(tmp_path: Path, source: str, task: str = "image_classification") -> Path:
    folder = tmp_path / "proj"
    folder.mkdir(exist_ok=True)
    (folder / "project.yaml").write_text(f"name: t\ntask: {{type: {task}}}\ndata: {{source: {source}}}\n")
    return folder


def images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (6, 6), (10, 20, 30)).save(folder / name)


def test_image_folder_with_unlabelled_test_and_a_stray_file(tmp_path: Path) -> None:
    images(tmp_path / "data" / "cat", ["1.png", "2.jpg"])
    images(tmp_path / "data" / "dog", ["1.png"])
    (tmp_path / "data" / "dog" / "readme.txt").write_text("hi")
    images(tmp_path / "test", ["a.png", "b.png"])
    listing = list_images(load_config(project(tmp_path, f"{{kind: image_folder, root: {tmp_path / 'data'}, test: {tmp_path / 'test'}}}")))
    assert listing.classes == ["cat", "dog"]
    train = [r for r in listing.records if r.split == TRAIN]
    test = [r for r in listing.records if r.split == TEST]
    assert {(r.id, r.label) for r in train} == {("data/cat/1", "cat"), ("data/cat/2", "cat"), ("data/dog/1", "dog")}
    assert {(r.id, r.label) for r in test} == {("a", None), ("b", None)}
    assert not listing.test_labelled
    assert listing.rejected == [("data/dog/readme.txt", NOT_AN_IMAGE, "extension .txt is not an image type")]


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    images(tmp_path / "data" / "cat", ["1.png"])
    images(tmp_path / "data" / "dog", ["1.png"])
    (tmp_path / "data" / "bird").mkdir()
    with pytest.raises(DataError, match=r"empty class folders in .*data: bird"):
        list_images(load_config(project(tmp_path, f"{{kind: image_folder, root: {tmp_path / 'data'}}}")))


def test_single_class_is_an_error(tmp_path: Path) -> None:
    images(tmp_path / "data" / "cat", ["1.png", "2.png"])
    with pytest.raises(DataError, match=r"only one class \('cat'\)"):
        list_images(load_config(project(tmp_path, f"{{kind: image_folder, root: {tmp_path / 'data'}}}")))


def test_nested_class_folders_are_an_error_naming_them(tmp_path: Path) -> None:
    images(tmp_path / "data" / "cat" / "indoor", ["1.png"])
    images(tmp_path / "data" / "dog", ["1.png"])
    with pytest.raises(DataError, match=r"nested folders inside class folders .*: cat/indoor"):
        list_images(load_config(project(tmp_path, f"{{kind: image_folder, root: {tmp_path / 'data'}}}")))


def test_csv_listing_a_missing_file_rejects_that_row(tmp_path: Path) -> None:
    images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb,y\nc.png,x\nghost.png,y\n")
    listing = list_images(load_config(project(tmp_path, f"{{kind: image_csv, csv: {tmp_path / 'labels.csv'}, images: {tmp_path / 'imgs'}}}")))
    assert [(r.id, r.label) for r in listing.records] == [("a", "x"), ("b", "y"), ("c", "x")]  # "b" got .png appended
    (relpath, reason, detail), = listing.rejected
    assert relpath == "ghost.png" and reason == MISSING and "labels.csv line 5" in detail


def test_csv_without_the_label_column_names_the_columns(tmp_path: Path) -> None:
    images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "labels.csv").write_text("path,klass\na.png,x\n")
    with pytest.raises(DataError, match=r"labels\.csv: no label column 'label' \(columns: path, klass\)"):
        list_images(load_config(project(tmp_path, f"{{kind: image_csv, csv: {tmp_path / 'labels.csv'}, images: {tmp_path / 'imgs'}}}")))


def test_classes_only_in_the_test_set_are_an_error(tmp_path: Path) -> None:
    images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (tmp_path / "train.csv").write_text("path,label\na.png,x\nb.png,y\n")
    (tmp_path / "test.csv").write_text("path,label\nc.png,z\n")
    source = f"{{kind: image_csv, csv: {tmp_path / 'train.csv'}, images: {tmp_path / 'imgs'}, test_csv: {tmp_path / 'test.csv'}}}"
    with pytest.raises(DataError, match="classes present only in the test set: z"):
        list_images(load_config(project(tmp_path, source)))


def test_torchvision_offline_without_a_local_copy_says_where_to_put_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / "home"))
    source = f"{{kind: torchvision, name: FashionMNIST, root: {tmp_path / 'nothing'}, download: false}}"
    with pytest.raises(DataError, match=r"FashionMNIST has no local copy .* Put the four \*-idx\?-ubyte\(\.gz\) files .* under .*nothing"):
        list_images(load_config(project(tmp_path, source)))


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_torchvision_local_idx_copy_is_read_without_the_internet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's dataset-fashion-mnist layout: the four gzipped IDX files in one folder."""
    monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / "home"))
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    listing = list_images(load_config(project(tmp_path, f"{{kind: torchvision, name: FashionMNIST, root: {root}, download: false}}")))
    assert sum(r.split == TRAIN for r in listing.records) == 12 and sum(r.split == TEST for r in listing.records) == 4
    assert listing.test_labelled
    assert listing.classes == ["Pullover", "T-shirt/top", "Trouser"]
    first = next(r for r in listing.records if r.split == TRAIN)
    assert np.asarray(Image.open(first.path)).shape == (28, 28)


def test_truncated_idx_file_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.zeros((4, 2, 2)))
    data = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "cut").write_bytes(data[:-3])
    with pytest.raises(DataError, match="cut is truncated"):
        read_idx(tmp_path / "cut")


def test_train_val_test_folders_give_the_usual_layout(tmp_path: Path) -> None:
    images(tmp_path / "data" / "train" / "cat", ["1.png", "2.png"])
    images(tmp_path / "data" / "train" / "dog", ["1.png"])
    images(tmp_path / "data" / "val" / "cat", ["1.png"])
    images(tmp_path / "data" / "val" / "dog", ["9.png"])
    images(tmp_path / "data" / "test" / "dog", ["t1.png"])
    root = tmp_path / "data"
    source = f"{{kind: image_folder, root: {root / 'train'}, val: {root / 'val'}, test: {root / 'test'}}}"
    listing = list_images(load_config(project(tmp_path, source)))
    assert listing.root == root and listing.test_labelled
    by_split = {split: {(r.id, r.label) for r in listing.records if r.split == split} for split in (TRAIN, VAL, TEST)}
    # the same file name in train and val are two items with two ids
    assert by_split[TRAIN] == {("train/cat/1", "cat"), ("train/cat/2", "cat"), ("train/dog/1", "dog")}
    assert by_split[VAL] == {("val/cat/1", "cat"), ("val/dog/9", "dog")}
    assert by_split[TEST] == {("t1", "dog")}


def test_a_class_only_in_the_validation_folder_is_an_error(tmp_path: Path) -> None:
    images(tmp_path / "train" / "cat", ["1.png"])
    images(tmp_path / "train" / "dog", ["1.png"])
    images(tmp_path / "val" / "bird", ["1.png"])
    source = f"{{kind: image_folder, root: {tmp_path / 'train'}, val: {tmp_path / 'val'}}}"
    with pytest.raises(DataError, match="classes present only in the validation folder: bird"):
        list_images(load_config(project(tmp_path, source)))


def test_a_validation_folder_inside_the_training_folder_is_an_error(tmp_path: Path) -> None:
    images(tmp_path / "train" / "cat", ["1.png"])
    images(tmp_path / "train" / "dog", ["1.png"])
    images(tmp_path / "train" / "val" / "cat", ["1.png"])
    source = f"{{kind: image_folder, root: {tmp_path / 'train'}, val: {tmp_path / 'train' / 'val'}}}"
    with pytest.raises(DataError, match=r"data.source.val .* lies inside data.source.root"):
        list_images(load_config(project(tmp_path, source)))


def test_editing_the_validation_folder_changes_the_sources_content_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the ingest key holds this digest: a changed val/ must rerun ingest and everything after it
    monkeypatch.setenv("TRAINWISE_HOME", str(tmp_path / "home"))
    images(tmp_path / "train" / "cat", ["1.png"])
    images(tmp_path / "train" / "dog", ["1.png"])
    images(tmp_path / "val" / "cat", ["1.png"])
    cfg = load_config(project(tmp_path, f"{{kind: image_folder, root: {tmp_path / 'train'}, val: {tmp_path / 'val'}}}"))
    before = fingerprint(cfg)
    Image.new("RGB", (6, 6), (200, 20, 30)).save(tmp_path / "val" / "cat" / "1.png")
    assert fingerprint(cfg) != before
