"""What the steps after ingest read from it: the labelled pool and the provided test set, one table each.

Images: the usable manifest rows (id, path, label, hashes, pixel statistics). Tables: the rows
themselves with an `id` column (the configured id column, or the row number) and the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trainwise.config import ProjectConfig, TabularSource
from trainwise.data.loading import PreparedData, load_prepared
from trainwise.data.manifest import OK
from trainwise.data.records import TEST, TRAIN
from trainwise.data.tables import with_ids
from trainwise.errors import ConfigError
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash
from trainwise.steps import artifacts
from trainwise.steps.runner import StepContext
from trainwise.tracking import Registry, Tracker

IMAGE_PROPERTIES = ["width", "height", "brightness", "contrast", "mean_c0", "mean_c1", "mean_c2"]


@dataclass
class IngestedData:
    pool: pd.DataFrame  # labelled items to sample and split; columns id, label, ...
    test: pd.DataFrame | None  # the provided test set (labelled or not), if any
    label: str  # the column holding the label or target
    properties: list[str]  # numeric columns compared between sample and full
    test_labelled: bool


def load_ingested(cfg: ProjectConfig, ctx: StepContext) -> IngestedData:
    if cfg.task.is_image:
        manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST))
        usable = manifest[manifest["status"] == OK]
        pool = usable[usable["split"] == TRAIN].reset_index(drop=True)
        test = usable[usable["split"] == TEST].reset_index(drop=True)
        labelled = bool(len(test)) and test["label"].notna().all()
        # For grey images the one channel's mean is the brightness: compare it once.
        properties = IMAGE_PROPERTIES if cfg.image.channels == 3 else IMAGE_PROPERTIES[:4]
        return IngestedData(pool, test if len(test) else None, "label", properties, labelled)

    source = cfg.data.source
    assert isinstance(source, TabularSource)
    target = cfg.task.target
    table = with_ids(pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.TABLE)), source.id_column)
    pool = table[table[target].notna()].reset_index(drop=True)
    test = None
    if source.test_path is not None:
        test = with_ids(pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.TEST_TABLE)), source.id_column)
    numeric = [c for c in pool.columns if c not in ("id", target) and pd.api.types.is_numeric_dtype(pool[c])]
    properties = numeric + ([] if cfg.task.is_classification else [target])
    labelled = test is not None and target in test.columns and test[target].notna().all()
    return IngestedData(pool, test, target, properties, labelled)


def load_prepared_data(cfg: ProjectConfig, ctx: StepContext, scope: str) -> PreparedData:
    """One scope of prepare's outputs as tensors (images from the decoded cache, rows through preprocessing)."""
    image = cfg.task.is_image
    return load_prepared(
        cfg,
        scope,
        splits_file=ctx.upstream_artifact("prepare", artifacts.SPLITS),
        preprocessing_file=ctx.upstream_artifact("prepare", artifacts.PREPROCESSING),
        cache_file=ctx.upstream_artifact("prepare", artifacts.CACHE_INFO) if image else None,
        table_file=None if image else ctx.upstream_artifact("ingest", artifacts.TABLE),
    )


def initial_weights(cfg: ProjectConfig, tracker: Tracker) -> Path | None:
    """model.init: a .safetensors file, or the weights inside a logged or registered trainwise model."""
    init = cfg.model.init
    if init is None:
        return None
    if not init.startswith(("models:/", "runs:/")):
        return Path(init)
    init = Registry(tracker.tracking_uri).pin(init)  # the champion of today, not the one cached last time
    folder = tracker.download_model(init, trainwise_home() / "models" / short_hash(init))
    found = sorted(folder.rglob("*.safetensors"))
    if not found:
        raise ConfigError(f"model.init: {init} holds no .safetensors weights (is it a trainwise model?)")
    return found[0]
