"""Where a project's data comes from: one model per source kind, told apart by `kind`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainwise.config.base import Section, resolve_path
from trainwise.paths import data_cache_dir

# --- data sources -------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DigitsSource(Section):
    """scikit-learn's 1,797 8x8 digits, written once as a Kaggle-style image folder."""

    kind: Literal["digits"]
    root: Path | None = Field(None, validate_default=True, description="where the folder is written; default <TRAINWISE_HOME>/data/digits")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share held out as the unlabelled test set")
    seed: int = 0

    @field_validator("root")
    @classmethod
    def _root(cls, value: Path | None, info: ValidationInfo) -> Path:
        return resolve_path(value, info, must_exist=False) or data_cache_dir() / "digits"

    @property
    def train_dir(self) -> Path:
        assert self.root is not None
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        assert self.root is not None
        return self.root / "test"


class ImageFolderSource(Section):
    """`root/<class>/*.png|jpg|...`, with an optional validation folder and test folder (the usual train/ val/ test/ layout)."""

    kind: Literal["image_folder"]
    root: Path = Field(description="folder with one sub-folder of images per class")
    val: Path | None = Field(
        None, description="folder of labelled validation images (<class>/*), used as the validation split instead of split.val"
    )
    test: Path | None = Field(
        None, description="folder of test images: unlabelled (*) to predict for the submission, or labelled (<class>/*) as the test split"
    )
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @field_validator("root", "val", "test")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)


class ImageCsvSource(Section):
    """Images listed in a CSV (`path,label` or `id,label`) plus the folder that holds them."""

    kind: Literal["image_csv"]
    csv: Path
    images: Path = Field(description="folder the CSV's paths or ids are relative to")
    path_column: str = "path"
    label_column: str = "label"
    id_extension: str = Field(".png", description="appended to ids when the CSV names images by id")
    test_csv: Path | None = None

    @field_validator("csv", "images", "test_csv")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)


class TorchvisionSource(Section):
    """A torchvision dataset by name: a local copy when present, else downloaded."""

    kind: Literal["torchvision"]
    name: Literal["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"]
    root: Path = Field(description="local copy, or where the download goes")
    download: bool = Field(True, description="download when no local copy exists (needs the internet)")

    @field_validator("root")
    @classmethod
    def _root(cls, value: Path, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info, must_exist=False)


class TabularSource(Section):
    """A CSV or Parquet table with a target column, or one of scikit-learn's bundled tables."""

    kind: Literal["tabular"]
    path: Path | None = Field(None, description="CSV or Parquet file with the target column")
    sklearn: Literal["wine", "breast_cancer", "diabetes"] | None = Field(None, description="a bundled scikit-learn table")
    test_path: Path | None = Field(None, description="unlabelled test rows, same columns less the target")
    id_column: str | None = None

    @field_validator("path", "test_path")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = resolve_path(value, info)
        if path is not None and path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise ValueError(f"{path.name}: expected a .csv or .parquet file")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> TabularSource:
        if (self.path is None) == (self.sklearn is None):
            raise ValueError("give exactly one of 'path' (your own CSV/Parquet) or 'sklearn' (wine, breast_cancer, diabetes)")
        return self


Source = Annotated[
    DigitsSource | ImageFolderSource | ImageCsvSource | TorchvisionSource | TabularSource,
    Field(discriminator="kind"),
]
SOURCE_KINDS = ("digits", "image_folder", "image_csv", "torchvision", "tabular")
IMAGE_SOURCE_KINDS = frozenset({"digits", "image_folder", "image_csv", "torchvision"})


class DataConfig(Section):
    source: Source
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="ingest fails when more than this share of files is bad")
    max_image_pixels: int = Field(40_000_000, gt=0, description="larger images are quarantined (decompression bombs)")
    near_duplicate_similarity: float = Field(
        0.97, gt=0, le=1,
        description="near duplicates: the pixel correlation (of 32x32 thumbnails and of their detail) a pair must reach; "
        "stricter for images under 32 px",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: object) -> object:
        if isinstance(values, dict) and "near_duplicate_distance" in values:
            raise ValueError(
                "data.near_duplicate_distance (a perceptual-hash distance) is gone: near duplicates are now verified "
                "by pixel correlation. Remove it, or set data.near_duplicate_similarity (default 0.97; higher is stricter)."
            )
        return values
