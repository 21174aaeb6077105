"""From prepare's outputs to tensors in memory: what `check` and `train` hand to the engine.

Images come from the decoded cache as uint8 (N, C, H, W) and are augmented and normalised per
batch on the device (`image_transforms`); table rows go through the fitted preprocessing once.
The same function serves the sample (scope 'sample') and the full data (scope 'full').
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainwise.config import ProjectConfig
from trainwise.data.cache import DecodedCache
from trainwise.data.table_prep import TablePreprocessor
from trainwise.data.transforms import augment_batch, build_augmentation, normalize
from trainwise.engine import TensorData
from trainwise.metrics import CLASSIFICATION, REGRESSION

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PreparedData:
    """One scope's splits as tensors, plus what a served model needs to repeat the preprocessing."""

    task: str  # CLASSIFICATION or REGRESSION
    classes: list[str]  # index -> class name (empty for regression)
    input_shape: tuple[int, ...]  # (C, H, W) or (features,)
    splits: dict[str, TensorData]  # train, val, and test when labelled
    ids: dict[str, list[str]]
    preprocessing: dict[str, Any]  # what serving repeats on raw inputs
    target_scale: tuple[float, float] = (0.0, 1.0)
    submit: TensorData | None = None  # unlabelled test items (y is a dummy)
    submit_ids: list[str] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == CLASSIFICATION else 1

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def prior(self) -> list[float]:
        """Class shares in the training split (what a model that ignores its input should predict)."""
        counts = torch.bincount(self.splits["train"].y, minlength=len(self.classes)).double()
        return (counts / counts.sum()).tolist()


def load_prepared(
    cfg: ProjectConfig, scope: str, *, splits_file: Path, preprocessing_file: Path, cache: DecodedCache | None, table: pd.DataFrame | None
) -> PreparedData:
    """Read one scope ('full' or 'sample') of prepare's outputs into tensors.

    `table` (tabular projects): every row, training and provided test alike, indexed by its unique id.
    """
    splits = pd.read_parquet(splits_file)
    preprocessing = json.loads(preprocessing_file.read_text())
    labelled = splits[(splits["scope"] == "full") & splits["label"].notna()]
    task = CLASSIFICATION if cfg.task.is_classification else REGRESSION
    classes = sorted(labelled["label"].astype(str).unique()) if task == CLASSIFICATION else []
    part = splits[splits["scope"] == scope]
    scoped = _Scope(scope, part, [s for s in ("train", "val", "test") if (part["split"] == s).any()], classes, task, splits)
    if preprocessing["kind"] == "image":
        assert cache is not None
        return _images(scoped, preprocessing, cache)
    assert table is not None
    return _table(cfg, scoped, preprocessing, table)


@dataclass
class _Scope:
    name: str
    part: pd.DataFrame  # this scope's rows of splits.parquet
    names: list[str]  # its labelled splits
    classes: list[str]
    task: str
    splits: pd.DataFrame  # every row (the unlabelled test items are in scope 'full')


def _images(scoped: _Scope, prep: dict, cache: DecodedCache) -> PreparedData:
    part, names, classes, task, splits = scoped.part, scoped.names, scoped.classes, scoped.task, scoped.splits
    images = cache.images()
    position = pd.Series(np.arange(len(cache.index())), index=cache.index()["id"])
    class_index = {name: i for i, name in enumerate(classes)}

    def take(ids: pd.Series) -> torch.Tensor:
        rows = images[position[ids].to_numpy()]  # fancy indexing copies out of the memory map
        return torch.from_numpy(np.ascontiguousarray(rows)).permute(0, 3, 1, 2).contiguous()

    tensors, ids = {}, {}
    for name in names:
        rows = part[part["split"] == name]
        tensors[name] = TensorData(take(rows["id"]), torch.tensor([class_index[str(v)] for v in rows["label"]], dtype=torch.long))
        ids[name] = rows["id"].tolist()
    submit_rows = splits[(splits["scope"] == "full") & (splits["split"] == "submit")]
    submit = TensorData(take(submit_rows["id"]), torch.zeros(len(submit_rows), dtype=torch.long)) if len(submit_rows) else None
    height, width = prep["size"]
    preprocessing = {"kind": "image", "size": [height, width], "channels": prep["channels"], "mean": prep["mean"], "std": prep["std"]}
    return PreparedData(task, classes, (prep["channels"], height, width), tensors, ids, preprocessing, submit=submit, submit_ids=submit_rows["id"].tolist())


def _table(cfg: ProjectConfig, scoped: _Scope, prep: dict, table: pd.DataFrame) -> PreparedData:
    part, names, classes, task = scoped.part, scoped.names, scoped.classes, scoped.task
    fitted = dict(prep[scoped.name])
    mean, std = fitted.pop("target_mean", 0.0), fitted.pop("target_std", 1.0)
    preprocessor = TablePreprocessor.from_dict(fitted)
    target = cfg.task.target
    tensors, ids = {}, {}
    class_index = {name: i for i, name in enumerate(classes)}
    for name in names:
        rows = table.loc[part.loc[part["split"] == name, "id"]]
        x = torch.from_numpy(preprocessor.transform(rows))
        if task == CLASSIFICATION:
            y = torch.tensor([class_index[str(v)] for v in rows[target]], dtype=torch.long)
        else:
            y = torch.from_numpy(((pd.to_numeric(rows[target]).to_numpy() - mean) / std).astype(np.float32))
        tensors[name], ids[name] = TensorData(x, y), rows["id"].tolist()
    preprocessing = {"kind": "table", **preprocessor.to_dict(), "target_mean": mean, "target_std": std}
    return PreparedData(task, classes, (len(preprocessor.feature_names),), tensors, ids, preprocessing, target_scale=(mean, std))


def augments_at_random(cfg: ProjectConfig) -> bool:
    """Whether any random augmentation is on (else training images are only normalised)."""
    return any(getattr(cfg.augment, k) for k in ("flip", "crop_padding", "rotation", "color_jitter", "erasing"))


def image_transforms(cfg: ProjectConfig, data: PreparedData) -> tuple[Transform, Transform]:
    """(train, eval) batch transforms for uint8 images: augment then normalise; eval only normalises."""
    mean, std = data.preprocessing["mean"], data.preprocessing["std"]
    augment = build_augmentation(cfg.augment, cfg.image.size)
    randomised = augments_at_random(cfg)

    def train(x: torch.Tensor) -> torch.Tensor:
        return normalize(augment_batch(x, augment) if randomised else x.float() / 255.0, mean, std)

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        return normalize(x.float() / 255.0, mean, std)

    return train, evaluate
