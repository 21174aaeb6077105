"""What the steps after ingest read from it: the labelled pool and the provided test set, one table each.

Images: the usable manifest rows (id, path, label, hashes, pixel statistics). Tables: the rows
themselves with an `id` column (the configured id column, or the row number) and the target.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from trainwise.config import ProjectConfig, TabularSource
from trainwise.data.cache import DecodedCache, build_cache, find_cache
from trainwise.data.manifest import OK
from trainwise.data.records import POOL, TEST, VAL, list_images
from trainwise.data.tables import with_ids
from trainwise.errors import ChecksFailedError, ConfigError, DataError
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash
from trainwise.steps import artifacts
from trainwise.steps.runner import TAG_PASSED, StepContext
from trainwise.tracking import Registry, Tracker

if TYPE_CHECKING:
    from trainwise.data.loading import PreparedData
    from trainwise.engine import Callback, Trainer

# torch (through fitting, serving, data.loading) is imported inside the functions that train or
# load tensors: explore and sample read only tables, and importing torch cost them ~4.5 s each
# (2 shared x86_64 cores, -X importtime; issue 10 §4's budget is 20 s for both together).

log = logging.getLogger(__name__)

IMAGE_PROPERTIES = ["width", "height", "brightness", "contrast", "mean_c0", "mean_c1", "mean_c2"]


@dataclass
class IngestedData:
    pool: pd.DataFrame  # labelled items to sample and split; columns id, label, ...
    test: pd.DataFrame | None  # the provided test set (labelled or not), if any
    label: str  # the column holding the label or target
    properties: list[str]  # numeric columns compared between sample and full
    test_labelled: bool
    given_split: pd.Series | None = None  # per pool item: "val" where the source fixed it (a validation folder), else NaN

    @property
    def items(self) -> pd.DataFrame:
        """The pool and the provided test set (if any), one row per item."""
        return pd.concat([self.pool, self.test] if self.test is not None else [self.pool], ignore_index=True)


def load_ingested(cfg: ProjectConfig, ctx: StepContext) -> IngestedData:
    if cfg.task.is_image:
        manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST))
        usable = manifest[manifest["status"] == OK]
        pool = usable[usable["split"].isin(POOL)].reset_index(drop=True)
        test = usable[usable["split"] == TEST].reset_index(drop=True)
        labelled = bool(len(test)) and test["label"].notna().all()
        # For grey images the one channel's mean is the brightness: compare it once.
        properties = IMAGE_PROPERTIES if cfg.image.channels == 3 else IMAGE_PROPERTIES[:4]
        given = pool["split"].where(pool["split"] == VAL) if (pool["split"] == VAL).any() else None
        return IngestedData(pool, test if len(test) else None, "label", properties, labelled, given)

    target = cfg.task.target
    table, test = _tables(cfg, ctx)
    pool = table[table[target].notna()].reset_index(drop=True)
    numeric = [c for c in pool.columns if c not in ("id", target) and pd.api.types.is_numeric_dtype(pool[c])]
    properties = numeric + ([] if cfg.task.is_classification else [target])
    labelled = test is not None and target in test.columns and test[target].notna().all()
    return IngestedData(pool, test, target, properties, labelled)


def _tables(cfg: ProjectConfig, ctx: StepContext) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The training table and the provided test table (if any), each with ids no row of the other has."""
    source = cfg.data.source
    assert isinstance(source, TabularSource)
    table = with_ids(pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.TABLE)), source.id_column)
    if source.test_path is None:
        return table, None
    test = with_ids(pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.TEST_TABLE)), source.id_column, prefix="t")
    shared = sorted(set(table["id"]) & set(test["id"]))
    if shared:  # one id would name two rows: scores and submissions would mix them up
        raise DataError(
            f"{len(shared)} ids are both in {source.path} and in {source.test_path} (e.g. {', '.join(shared[:3])}); "
            f"the id column {source.id_column or 'id'!r} must be unique across the training and test tables"
        )
    return table, test


def table_rows(cfg: ProjectConfig, ctx: StepContext) -> pd.DataFrame:
    """Every row of a tabular project (training and provided test rows) indexed by its id."""
    table, test = _tables(cfg, ctx)
    both = table if test is None else pd.concat([table, test], ignore_index=True)
    return both.set_index("id", drop=False)


def load_prepared_data(cfg: ProjectConfig, ctx: StepContext, scope: str) -> PreparedData:
    """One scope of prepare's outputs as tensors (images from the decoded cache, rows through preprocessing),
    normalised as the model needs (pretrained weights bring their own mean and std: fitting.with_model_preprocessing)."""
    from trainwise.data.loading import load_prepared
    from trainwise.fitting import with_model_preprocessing

    image = cfg.task.is_image
    data = load_prepared(
        cfg,
        scope,
        splits_file=ctx.upstream_artifact("prepare", artifacts.SPLITS),
        preprocessing_file=ctx.upstream_artifact("prepare", artifacts.PREPROCESSING),
        cache=decoded_cache(cfg, ctx) if image else None,
        table=None if image else table_rows(cfg, ctx),
    )
    return with_model_preprocessing(cfg, data)


def cache_items(data: IngestedData, splits: pd.DataFrame) -> pd.DataFrame:
    """The images the decoded cache holds (pool and provided test set): id, path, label, split, sha256."""
    items = data.items
    items = items.merge(splits[splits["scope"] == "full"][["id", "split"]], on="id", suffixes=("_ingest", ""))
    return items[["id", "path", "label", "split", "sha256"]]


def decoded_cache(cfg: ProjectConfig, ctx: StepContext) -> DecodedCache:
    """prepare's decoded cache, found on this machine by its key, or rebuilt here from the upstream
    runs' artifacts (ingest's manifest, prepare's splits) and the source images."""
    info = json.loads(ctx.upstream_artifact("prepare", artifacts.CACHE_INFO).read_text())
    found = find_cache(info["key"])
    if found is not None:
        return found
    log.info("decoded cache %s is not on this machine: rebuilding it from run %s", info["key"], ctx.upstream["prepare"])
    splits = pd.read_parquet(ctx.upstream_artifact("prepare", artifacts.SPLITS))
    rebuilt = build_cache(
        cache_items(load_ingested(cfg, ctx), splits), list_images(cfg).root, data_digest=info["data_digest"],
        size=tuple(info["size"]), channels=info["channels"], max_pixels=cfg.data.max_image_pixels,
    )  # fmt: skip
    if rebuilt.key != info["key"]:
        raise DataError(f"the decoded cache rebuilt here has key {rebuilt.key}, prepare's has {info['key']}; rerun prepare with --force")
    return rebuilt


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


def make_trainer(
    cfg: ProjectConfig, data: PreparedData, tracker: Tracker, *, callbacks: list[Callback], epochs: int | None = None, progress: str | None = None
) -> Trainer:
    """fitting.make_trainer with `model.init` resolved (downloaded when it names a logged or registered model)."""
    from trainwise import fitting

    return fitting.make_trainer(cfg, data, init_weights=initial_weights(cfg, tracker), callbacks=callbacks, epochs=epochs, progress=progress)


def require_passed_checks(ctx: StepContext) -> None:
    """Train only after the checks passed for the same data and pipeline config (or when told to skip)."""
    if ctx.skip_checks:
        log.warning("--skip-checks: training without a passed check run (recorded as a tag)")
        return
    check = ctx.tracker.get_run(ctx.upstream["check"])
    if check.data.tags.get(TAG_PASSED) != "true":
        raise ChecksFailedError(
            f"the pipeline checks for this data and config failed ({check.data.tags.get('trainwise.checks', '?')}); "
            f"see {ctx.tracker.url_of(check)}. Fix what they report, or train anyway with --skip-checks"
        )


def input_example(cfg: ProjectConfig, ctx: StepContext, data: PreparedData) -> pd.DataFrame:
    ids = data.ids.get("val") or data.ids["train"]
    if data.is_image:
        manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST)).set_index("id")
        from trainwise import serving

        root = list_images(cfg).root
        return pd.DataFrame({serving.IMAGE_COLUMN: [str(root / manifest.at[i, "path"]) for i in ids[:2]]})
    return table_rows(cfg, ctx).loc[ids[:2]].drop(columns=["id", cfg.task.target]).reset_index(drop=True)
