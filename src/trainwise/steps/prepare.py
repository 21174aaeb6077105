"""Step 3, prepare: splits without leakage, statistics from the training split, augmentation, the cache.

The same code prepares the full data and the sample (scope 'full' and 'sample' in splits.parquet),
so the checks on the sample exercise exactly the pipeline that trains on the full data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainwise import plots
from trainwise.checks import CheckResult, summary
from trainwise.checks.class_sizes import class_size_check
from trainwise.checks.drift import train_test_drift_checks
from trainwise.checks.shortcuts import shortcut_check
from trainwise.config import ProjectConfig
from trainwise.data.cache import build_cache, channel_stats
from trainwise.data.image_properties import image_properties
from trainwise.data.manifest import data_digest
from trainwise.data.records import list_images
from trainwise.data.sampling import group_split, strata
from trainwise.data.splitting import duplicate_groups, full_splits
from trainwise.data.table_prep import TablePreprocessor
from trainwise.data.transforms import augment_batch, build_augmentation, denormalize, normalize
from trainwise.errors import DataError
from trainwise.steps import artifacts
from trainwise.steps.artifacts import TAG_CHECKS
from trainwise.steps.inputs import IngestedData, cache_items, load_ingested
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)

FULL, SAMPLE = "full", "sample"
TAG_SPLIT_DIGEST = "trainwise.split_digest"  # which item is in which split of the full data
PREVIEW_SIZE = 32


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    data = load_ingested(cfg, ctx)
    sample_ids = set(pd.read_parquet(ctx.upstream_artifact("sample", artifacts.SAMPLE))["id"])
    splits = make_splits(cfg, data, sample_ids)
    leaks = leakage_checks(cfg, data, splits)

    run.log_frame(splits, artifacts.SPLITS)
    counts = splits.groupby(["scope", "split"]).size().rename("items").reset_index()
    run.log_frame(counts, "split_counts.csv")
    run.log_metrics({f"items.{r.scope}.{r.split}": r.items for r in counts.itertuples()})
    run.log_dict({"checks": [r.to_dict() for r in leaks]}, "leakage.json")
    spanning = leaked_groups(data, splits) if cfg.task.is_image else None
    if spanning is not None and len(spanning):
        run.log_frame(spanning, artifacts.LEAKED_GROUPS)
    run.log_metrics({f"check.{r.name}": float(r.passed) for r in leaks} | {f"leaked.{r.name}": r.value for r in leaks})
    sizes = [class_size_check(splits, min_items=cfg.checks.min_class_items)] if cfg.task.is_classification else []
    run.log_dict({"checks": [r.to_dict() for r in sizes]}, artifacts.CLASS_SIZES)
    for result in sizes:
        run.log_figure(result.figure, f"checks/{result.name}.png")
        run.log_metrics({f"check.{result.name}": float(result.passed), "smallest_class_items": result.value})
    for result in leaks:
        if not result.passed:
            log.warning("%s: %s = %g (allowed %g): %s", cfg.name, result.name, result.value, result.threshold, result.advice)
    for result in sizes:
        if not result.passed:
            log.warning("%s: %s (fewer than %d): %s", cfg.name, result.meaning, cfg.checks.min_class_items, result.advice)

    if cfg.task.is_image:
        outputs, found = _prepare_images(cfg, run, ctx, data, splits)
    else:
        outputs, found = _prepare_table(cfg, run, data, splits)
    run.log_dict({"checks": [r.to_dict() for r in found.checks]}, artifacts.PROPERTY_CHECKS)
    for result in found.checks:
        if result.figure is not None:
            run.log_figure(result.figure, f"checks/{result.name}.png")
        if not result.passed:
            log.warning("%s: %s = %.4g (allowed %.4g): %s. %s", cfg.name, result.name, result.value, result.threshold, result.meaning, result.advice)
    run.log_metrics({f"check.{r.name}": float(r.passed) for r in found.checks} | {f"check_value.{r.name}": r.value for r in found.checks})
    if found.drift is not None:
        run.log_frame(found.drift, artifacts.TEST_DRIFT)
    if found.aucs is not None:
        run.log_frame(found.aucs.reset_index(), artifacts.PROPERTY_LABEL_AUC)  # the class names as a column
    full = splits[splits["scope"] == FULL]
    run.set_tags({
        TAG_CHECKS: summary(leaks + sizes + found.checks),
        TAG_SPLIT_DIGEST: data_digest(full[["id", "split"]].astype(str).itertuples(index=False)),
    })  # fmt: skip
    run.set_description(_markdown(cfg, counts, leaks + sizes + found.checks, outputs))
    return outputs


@dataclass
class PropertyChecks:
    """prepare's rows on item properties: test-vs-training drift, shortcuts; and the tables behind them."""

    checks: list[CheckResult] = field(default_factory=list)
    drift: pd.DataFrame | None = None  # per property or feature, training split vs provided test set
    aucs: pd.DataFrame | None = None  # class x image property, one-vs-rest AUC


def property_checks(cfg: ProjectConfig, data: IngestedData, splits: pd.DataFrame, properties: pd.DataFrame, *,
                    kind: str, shortcuts: bool) -> PropertyChecks:
    """Drift of the provided test set from the full training split (when there is a test set) and, for
    `shortcuts`, classes of the labelled pool picked out by one property. `properties`: a row per item, by id."""
    found = PropertyChecks()
    if data.test is not None and len(data.test):
        full = splits[splits["scope"] == FULL]
        train_ids = full.loc[full["split"] == "train", "id"]
        drift = train_test_drift_checks(
            properties.loc[train_ids].reset_index(drop=True), properties.loc[data.test["id"]].reset_index(drop=True),
            kind=kind, max_statistic=cfg.checks.max_test_drift, max_auc=cfg.checks.max_domain_auc, seed=cfg.split.seed,
        )  # fmt: skip
        found.checks += drift.checks
        found.drift = drift.drift
    if shortcuts:
        labels = data.pool.set_index("id")[data.label]
        result = shortcut_check(properties.loc[labels.index], labels, max_auc=cfg.checks.max_property_label_auc)
        found.checks.append(result.check)
        found.aucs = result.aucs
    return found


def make_splits(cfg: ProjectConfig, data: IngestedData, sample_ids: set[str]) -> pd.DataFrame:
    """id, label, split (train/val/test/submit) and scope (full/sample) of every item.

    The sample was drawn from the full training split (see data/splitting.py) and is split again
    inside it: no item of the full validation or test split is in the sample.
    """
    pool = data.pool
    classification, is_image = cfg.task.is_classification, cfg.task.is_image
    assigned = full_splits(pool, data.label, cfg.split, classification=classification, is_image=is_image, test_provided=data.test_labelled, given=data.given_split)
    full = pool[["id", data.label]].assign(split=assigned, scope=FULL)
    in_sample = pool["id"].isin(sample_ids)
    outside = pool.loc[in_sample & (assigned != "train"), "id"]
    if len(outside):  # the sample run was made from another split: its checks would see held-out items
        raise DataError(
            f"{len(outside)} sample items (e.g. {', '.join(map(str, outside[:3]))}) are outside the full data's training split; "
            f"rerun the sample step (`trainwise sample --project {cfg.project_ref} --force`)"
        )
    groups = duplicate_groups(pool, data.label, is_image=is_image, enabled=cfg.split.group_duplicates)
    kinds = strata(pool[data.label], classification=classification)
    sample = pool.loc[in_sample, ["id", data.label]].assign(
        split=group_split(kinds[in_sample], groups[in_sample], {"val": cfg.split.val}, seed=cfg.split.seed), scope=SAMPLE
    )
    parts = [full, sample]
    if data.test is not None:
        test = data.test
        label = test[data.label] if data.label in test else pd.Series([None] * len(test), index=test.index)
        parts.append(pd.DataFrame({"id": test["id"], data.label: label, "split": "test" if data.test_labelled else "submit", "scope": FULL}))
    return pd.concat(parts, ignore_index=True).rename(columns={data.label: "label"})


def leakage_checks(cfg: ProjectConfig, data: IngestedData, splits: pd.DataFrame) -> list[CheckResult]:
    """Duplicate groups spanning splits (per scope), and pool items duplicated in the provided test set."""
    if not cfg.task.is_image:
        return [_leak_check("table_rows_across_splits", _table_leaks(data, splits), cfg.checks.max_leaked_duplicates)]
    results = []
    info = data.items[["id", "sha256", "dup_group"]]
    # Items whose split the user gave (a validation folder, a labelled test set): trainwise cannot keep
    # their groups together, so their near copies are judged as a share below, as real data holds a
    # few natural look-alikes (Fashion-MNIST's trousers); exact copies still count one by one.
    given = set(data.pool.loc[data.given_split.notna(), "id"]) if data.given_split is not None else set()
    if data.test is not None and data.test_labelled:
        given |= set(data.test["id"])
    for scope in (FULL, SAMPLE):
        part = splits[(splits["scope"] == scope) & splits["split"].isin(["train", "val", "test"])].merge(info, on="id")
        # Exact copies (same bytes) and duplicate groups (exact or near: perceptual hash) counted apart.
        exact = part.groupby("sha256")["split"].nunique()
        results.append(_leak_check(f"exact_copies_across_splits_{scope}", int((exact > 1).sum()), cfg.checks.max_leaked_duplicates))
        drawn = part[~part["id"].isin(given)]  # the splits trainwise drew, which never separate a group
        spanning = drawn.dropna(subset=["dup_group"]).groupby("dup_group")["split"].nunique()
        results.append(_leak_check(f"duplicate_groups_across_splits_{scope}", int((spanning > 1).sum()), cfg.checks.max_leaked_duplicates))
    if data.given_split is not None:
        results.append(_near_copies_of_val(cfg, data, splits))
    if data.test is not None:
        exact = data.pool["sha256"].isin(set(data.test["sha256"]))
        results.append(_leak_check("pool_images_in_provided_test", int(exact.sum()), cfg.checks.max_leaked_duplicates))
        # near copies by the duplicate groups ingest formed over pool and test together; a share of the
        # test images, not a count: real data holds a few natural look-alikes (1 of digits' 360 test
        # images has one in the pool), while a copied-in test set shows up as a share of it
        exact_test = data.test["sha256"].isin(set(data.pool["sha256"]))
        near = ~exact_test & data.test["dup_group"].isin(set(data.pool["dup_group"].dropna()))
        share = float(near.mean()) if len(near) else 0.0
        results.append(
            CheckResult(
                "near_copies_of_provided_test",
                share <= cfg.checks.max_near_copies_of_test,
                share,
                cfg.checks.max_near_copies_of_test,
                f"share of the {len(data.test)} provided test images with a near copy (resized, re-encoded, "
                f"brightness-shifted) among the labelled items ({int(near.sum())} images)",
                "remove them from the training folders (duplicates.csv of the ingest run lists the groups): "
                "a model that saw the test images scores too well on them",
            )
        )
    return results


def _near_copies_of_val(cfg: ProjectConfig, data: IngestedData, splits: pd.DataFrame) -> CheckResult:
    """The share of a provided validation folder's images with a near copy (not the same bytes) in the
    other splits of the training folder (train, and a test split held out of it)."""
    full = splits[splits["scope"] == FULL].merge(data.pool[["id", "sha256", "dup_group"]], on="id")
    in_val = full["id"].isin(data.pool.loc[data.given_split.notna(), "id"])
    val, others = full[in_val], full[~in_val]
    near = ~val["sha256"].isin(set(others["sha256"])) & val["dup_group"].isin(set(others["dup_group"].dropna()))
    share = float(near.mean()) if len(val) else 0.0
    return CheckResult(
        "near_copies_of_provided_val",
        share <= cfg.checks.max_near_copies_of_test,
        share,
        cfg.checks.max_near_copies_of_test,
        f"share of the {len(val)} images of the validation folder with a near copy (resized, re-encoded, brightness-shifted) "
        f"in the training folder's splits ({int(near.sum())} images)",
        f"{artifacts.LEAKED_GROUPS} of the prepare run lists them: remove them from one folder, or the validation score "
        "flatters the model and early stopping and tuning select on it",
    )


def leaked_groups(data: IngestedData, splits: pd.DataFrame) -> pd.DataFrame:
    """Every item of an exact or near duplicate group that spans the full data's splits (submit: the provided unlabelled test)."""
    info = data.items[["id", "path", "dup_group"]]
    full = splits[splits["scope"] == FULL].merge(info, on="id").dropna(subset=["dup_group"])
    spans = full.groupby("dup_group")["split"].transform("nunique") > 1
    return full.loc[spans, ["dup_group", "split", "id", "path", "label"]].sort_values(["dup_group", "split", "id"]).reset_index(drop=True)


def _table_leaks(data: IngestedData, splits: pd.DataFrame) -> int:
    features = [c for c in data.pool.columns if c not in ("id", data.label)]
    full = splits[splits["scope"] == FULL][["id", "split"]].merge(data.pool, on="id")
    spanning = full.groupby(features, dropna=False)["split"].nunique()
    return int((spanning > 1).sum())


def _leak_check(name: str, value: int, allowed: int) -> CheckResult:
    return CheckResult(
        name=name,
        passed=value <= allowed,
        value=float(value),
        threshold=float(allowed),
        meaning="identical or near-identical items on both sides of a split inflate validation and test scores",
        advice=f"keep split.group_duplicates on; {artifacts.LEAKED_GROUPS} of the prepare run lists every item of a group that spans "
        "splits: remove or move them where you gave the split yourself (a validation or test folder or file)",
    )


def _prepare_images(
    cfg: ProjectConfig, run: StepRun, ctx: StepContext, data: IngestedData, splits: pd.DataFrame
) -> tuple[dict[str, Any], PropertyChecks]:
    items = cache_items(data, splits)
    digest = ctx.tracker.get_run(ctx.upstream["ingest"]).data.tags["trainwise.data_digest"]
    root = list_images(cfg).root
    cache = build_cache(
        items, root, data_digest=digest, size=cfg.image.size,
        channels=cfg.image.channels, max_pixels=cfg.data.max_image_pixels,
    )  # fmt: skip
    images, index = cache.images(), cache.index()
    position = pd.Series(np.arange(len(index)), index=index["id"])
    stats = {}
    for scope in (FULL, SAMPLE):
        train_ids = splits[(splits["scope"] == scope) & (splits["split"] == "train")]["id"]
        mean, std = channel_stats(images, position[train_ids].to_numpy())
        stats[scope] = {"mean": mean, "std": std, "items": len(train_ids)}
    run.log_dict(stats, artifacts.NORMALIZATION)
    run.log_dict(cache.info(), artifacts.CACHE_INFO)  # the key, not this machine's folder: others find or rebuild it
    run.log_dict(
        {"kind": "image", "size": list(cfg.image.size), "channels": cfg.image.channels, "mean": stats[FULL]["mean"], "std": stats[FULL]["std"]},
        artifacts.PREPROCESSING,
    )
    run.set_tags({"trainwise.cache_digest": cache.key})
    run.log_metrics({f"norm.mean_c{i}": m for i, m in enumerate(stats[FULL]["mean"])} | {f"norm.std_c{i}": s for i, s in enumerate(stats[FULL]["std"])})
    run.log_figure(augmentation_preview(cfg, images, position, splits, stats[FULL]), "augmentation_preview.png")
    manifest = data.items.set_index("id")
    properties = image_properties(manifest, images, position[manifest.index].to_numpy())
    found = property_checks(cfg, data, splits, properties, kind="image properties", shortcuts=cfg.task.is_classification)
    return {"cache": cache.key, "normalization": stats[FULL]}, found


def augmentation_preview(cfg: ProjectConfig, images: np.ndarray, position: pd.Series, splits: pd.DataFrame, stats: dict) -> Any:
    """One training batch exactly as the network sees it (augmented, normalised), denormalised to show."""
    train = splits[(splits["scope"] == FULL) & (splits["split"] == "train")]
    # seeded from split.seed, a setting prepare's key holds (train.seed is not in it: the preview would go stale)
    train = train.sample(n=min(PREVIEW_SIZE, len(train)), random_state=cfg.split.seed)  # a shuffled batch, as in training
    batch = torch.from_numpy(np.ascontiguousarray(images[position[train["id"]].to_numpy()])).permute(0, 3, 1, 2)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.split.seed)
    seen = normalize(augment_batch(batch, build_augmentation(cfg.augment, cfg.image.size)), stats["mean"], stats["std"])
    torch.random.set_rng_state(generator_state)
    shown = denormalize(seen, stats["mean"], stats["std"]).permute(0, 2, 3, 1).numpy()
    return plots.image_batch(shown, [str(label) for label in train["label"]], title="Augmented training batch (as the network sees it)")


def _prepare_table(cfg: ProjectConfig, run: StepRun, data: IngestedData, splits: pd.DataFrame) -> tuple[dict[str, Any], PropertyChecks]:
    fitted = {}
    for scope in (FULL, SAMPLE):
        train_ids = splits[(splits["scope"] == scope) & (splits["split"] == "train")]["id"]
        train = data.pool[data.pool["id"].isin(train_ids)]
        prep = TablePreprocessor.fit(train, data.label, drop=_identifier_columns(data))
        fitted[scope] = prep.to_dict()
        if not cfg.task.is_classification:
            target = pd.to_numeric(train[data.label])
            fitted[scope]["target_mean"], fitted[scope]["target_std"] = float(target.mean()), float(target.std(ddof=0)) or 1.0
    run.log_dict({"kind": "table", **fitted}, artifacts.PREPROCESSING)
    dropped = fitted[FULL]["dropped"]
    if dropped:
        log.info("%s: dropped columns %s", cfg.name, dropped)
    prep = TablePreprocessor.from_dict({k: v for k, v in fitted[FULL].items() if not k.startswith("target_")})
    found = PropertyChecks()
    if data.test is not None and len(data.test):
        # the features as the network sees them (one-hot categories, imputed gaps), identifiers dropped
        rows = pd.concat([data.pool, data.test], ignore_index=True)
        features = pd.DataFrame(prep.transform(rows), columns=prep.feature_names, index=rows["id"])
        found = property_checks(cfg, data, splits, features, kind="features", shortcuts=False)
    return {"features": len(prep.feature_names)}, found


def _identifier_columns(data: IngestedData) -> dict[str, str]:
    from trainwise.data.table_quality import table_findings

    findings = table_findings(data.pool.drop(columns=["id"]), data.label, classification=True)
    return {f.column: "identifier-like" for f in findings if f.check == "identifier_like" and f.column}


def _markdown(cfg: ProjectConfig, counts: pd.DataFrame, checks: list[CheckResult], outputs: dict[str, Any]) -> str:
    lines = [f"# {cfg.name}: prepare", "", "| scope | split | items |", "|---|---|---:|"]
    lines += [f"| {r.scope} | {r.split} | {r.items:,} |" for r in counts.itertuples()]
    lines += ["", "| data check | passed | value | threshold |", "|---|---|---:|---:|"]
    lines += [f"| {r.name} | {'yes' if r.passed else '**no**'} | {r.value:.4g} | {r.threshold:.4g} |" for r in checks]
    if "normalization" in outputs:
        norm = outputs["normalization"]
        lines += ["", f"Normalisation (training split only): mean {np.round(norm['mean'], 4).tolist()}, std {np.round(norm['std'], 4).tolist()}."]
    return "\n".join(lines)
