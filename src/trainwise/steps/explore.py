"""Step 2B, explore: the figures a person looks at before training, and one HTML data card with all of them.

Every figure is logged as a PNG under plots/ (the MLflow UI previews them) and embedded, with the
tables, in data_card.html. Pixel statistics come from the ingest manifest; only the few images a
figure shows (a grid per class, class means, duplicate groups) are decoded here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trainwise import plots
from trainwise.config import ProjectConfig
from trainwise.data.images import ImageProblem, read_image, resize
from trainwise.data.manifest import OK, QUARANTINED
from trainwise.data.records import POOL, list_images
from trainwise.datacard import CardSection, render_html
from trainwise.steps import artifacts
from trainwise.steps.inputs import load_ingested
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)

DATA_CARD = "data_card.html"
GRID_PER_CLASS = 8
MEAN_PER_CLASS = 200  # enough for a stable class mean; decoding every image would be a second ingest
IMPORTANCE_ROWS = 5000
DISTRIBUTION_PANELS = 12  # a 4 x 3 grid still readable on one screen
CORRELATION_COLUMNS = 30  # past this the heatmap's names no longer fit beside it


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    sections = _explore_images(cfg, ctx) if cfg.task.is_image else _explore_table(cfg, ctx)
    # Each figure is drawn once, and the same PNG goes to plots/ and into the card: drawing took
    # most of the step (5 figures of a 990x192 table: 2.4 s a pass on 2 shared x86_64 cores).
    rendered = []
    for section in sections:
        pngs = {name: plots.save_png(fig) if isinstance(fig, Figure) else fig for name, fig in section.figures.items()}
        for name, figure in section.figures.items():
            if isinstance(figure, Figure):
                run.log_bytes(pngs[name], f"plots/{name}.png")
        rendered.append(dataclasses.replace(section, figures=pngs))
    run.log_text(render_html(f"{cfg.name}: data card", rendered), DATA_CARD)
    figure_count = sum(len(s.figures) for s in sections)
    run.set_description(
        f"# {cfg.name}: exploration\n\n{sections[0].text}\n\n"
        f"{figure_count} figures under `plots/`; all of them, with the tables, in `{DATA_CARD}` (open it in the Artifacts tab)."
    )
    run.log_metrics({"figures": figure_count})
    return {"figures": figure_count}


# -- images -----------------------------------------------------------------------------------------


def _explore_images(cfg: ProjectConfig, ctx: StepContext) -> list[CardSection]:
    manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST))
    duplicates = pd.read_csv(ctx.upstream_artifact("ingest", artifacts.DUPLICATES), dtype=str).fillna("")
    usable = manifest[manifest["status"] == OK]
    train = usable[usable["split"].isin(POOL)]  # the labelled items, a provided validation folder's too
    bad = manifest[manifest["status"] == QUARANTINED]
    root = list_images(cfg).root
    rng = np.random.default_rng(cfg.sample.seed)
    counts = train["label"].value_counts().sort_index().to_dict()
    channels = [c for c in ("c0", "c1", "c2") if usable[f"mean_{c}"].notna().any()]

    overview = (
        f"{len(usable):,} usable images ({len(train):,} labelled, {len(usable) - len(train):,} in the test set) "
        f"in {len(counts)} classes; {len(bad):,} quarantined. Sizes from {usable['width'].min()}x{usable['height'].min()} "
        f"to {usable['width'].max()}x{usable['height'].max()}; the network sees {cfg.image.size[0]}x{cfg.image.size[1]}."
    )
    grids = {label: _decode(root, _pick(group, GRID_PER_CLASS, rng), cfg) for label, group in train.groupby("label")}
    means = {
        label: np.mean([resize(image, cfg.image.size).astype(np.float32) / 255 for image in _decode(root, _pick(group, MEAN_PER_CLASS, rng), cfg)], axis=0)
        for label, group in train.groupby("label")
    }
    groups = [
        [(image, f"{label} | {path}") for path, label, image in _decode_group(root, row, usable, cfg)]
        for row in duplicates.sort_values("conflicting_labels", ascending=False).head(10).itertuples()
    ]
    return [
        CardSection("Overview", overview, tables={"Classes": pd.DataFrame({"class": list(counts), "images": list(counts.values())})}),
        CardSection("Class balance", "Training images per class; the title gives the imbalance ratio.", {"class_distribution": plots.class_distribution(counts)}),
        CardSection("Samples", f"Up to {GRID_PER_CLASS} random training images per class, as stored.", {"sample_grid": plots.sample_grid(grids, GRID_PER_CLASS)}),
        CardSection("Sizes", "Width, height and aspect ratio of the stored images.", {"sizes": plots.size_histograms(usable["width"], usable["height"])}),
        CardSection(
            "Channels, brightness and contrast",
            "Per-image channel means and standard deviations (0-1), and grey-level brightness and contrast.",
            {
                "channel_stats": plots.channel_stats(usable[[f"mean_{c}" for c in channels]].to_numpy(), usable[[f"std_{c}" for c in channels]].to_numpy()),
                "brightness_contrast": plots.brightness_contrast(usable["brightness"], usable["contrast"]),
            },
        ),
        CardSection("Mean image per class", f"The average of up to {MEAN_PER_CLASS} images per class at the network's size.", {"mean_images": plots.mean_images(means)}),
        CardSection(
            "Duplicates",
            f"{len(duplicates)} groups of exact or near duplicates; groups with conflicting labels first. Groups never straddle splits.",
            {"duplicate_groups": plots.duplicate_groups(groups)},
            tables={"Groups": duplicates.drop(columns=["group"], errors="ignore")} if len(duplicates) else {},
        ),
        CardSection(
            "Quarantined files",
            f"{len(bad)} files could not be used; each with its reason.",
            tables={"Quarantine": bad[["path", "reason", "detail"]]} if len(bad) else {},
        ),
    ]


def _pick(group: pd.DataFrame, n: int, rng: np.random.Generator) -> list[str]:
    paths = sorted(group["path"])
    return [paths[i] for i in sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False))]


def _decode(root: Any, paths: list[str], cfg: ProjectConfig) -> list[np.ndarray]:
    images = []
    for path in paths:
        try:
            images.append(read_image(root / path, channels=cfg.image.channels, max_pixels=cfg.data.max_image_pixels)[0])
        except ImageProblem as problem:  # changed since ingest: show the rest
            log.warning("skipping %s: %s", path, problem)
    return images


def _decode_group(root: Any, row: Any, usable: pd.DataFrame, cfg: ProjectConfig) -> list[tuple[str, str, np.ndarray]]:
    labels = usable.set_index("path")["label"]
    paths = [p for p in row.paths.split("|") if p][:6]
    return [(path, str(labels.get(path, "")), image) for path, image in zip(paths, _decode(root, paths, cfg), strict=False)]


# -- tables -----------------------------------------------------------------------------------------


def _explore_table(cfg: ProjectConfig, ctx: StepContext) -> list[CardSection]:
    data = load_ingested(cfg, ctx)
    frame = data.pool.drop(columns=["id"])
    target = data.label
    classification = cfg.task.is_classification
    findings = pd.read_csv(ctx.upstream_artifact("ingest", "findings.csv"))
    overview = f"{len(frame):,} labelled rows, {frame.shape[1] - 1} feature columns; target `{target}`."
    importance = feature_importance(frame, target, classification=classification, seed=cfg.sample.seed)
    # A wide table gets its most informative features drawn, not its first ones; said in each
    # figure's note, in the card and in the log, so no feature leaves a figure unannounced. The
    # heatmap keeps a numeric target first: how features correlate with it is the point.
    ranked = sorted(importance, key=lambda name: -importance[name])
    correlated = {target: math.inf, **importance}
    numeric = sorted((c for c in frame.columns if _varies_numerically(frame[c])), key=lambda c: -correlated.get(c, -math.inf))
    panels, heatmap = ranked[:DISTRIBUTION_PANELS], numeric[:CORRELATION_COLUMNS]
    shown_text = {
        "distributions": _shown(panels, len(ranked), "features", "with the highest mutual information with the target"),
        "correlations": _shown(
            heatmap, len(numeric), "numeric columns", "ranked first (the target, then by mutual information with it)"
        ),
    }
    for what, text in shown_text.items():
        if text:
            log.info("%s: the %s figure shows %s", cfg.name, what, text)
    return [
        CardSection("Overview", overview, tables={"Columns": _column_table(frame, importance)}),
        CardSection("Target", "", {"target_distribution": plots.target_distribution(frame[target], classification=classification)}),
        CardSection(
            "Features by target",
            shown_text["distributions"] and f"Shown: {shown_text['distributions']}.",
            {
                "feature_distributions": plots.feature_distributions(
                    frame, target, classification=classification, max_features=DISTRIBUTION_PANELS, ranking=importance
                )
            },
        ),
        CardSection("Missing values", "", {"missingness": plots.missingness(frame)}),
        CardSection(
            "Correlations",
            "Pearson correlation of the numeric columns."
            + (f" Shown: {shown_text['correlations']}." if shown_text["correlations"] else ""),
            {"correlation_heatmap": plots.correlation_heatmap(frame, max_features=CORRELATION_COLUMNS, ranking=correlated)},
        ),
        CardSection(
            "Feature importance",
            "Mutual information between each feature and the target (a quick, model-free ranking); "
            "every feature's score is in the Columns table.",
            {"feature_importance": plots.feature_importance(importance)},
        ),
        CardSection("Quality findings", f"{len(findings)} findings from ingest.", tables={"Findings": findings} if len(findings) else {}),
    ]


def feature_importance(frame: pd.DataFrame, target: str, *, classification: bool, seed: int) -> dict[str, float]:
    """Mutual information of each feature with the target, on up to IMPORTANCE_ROWS rows."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    rows = frame.dropna(subset=[target])
    rows = rows.sample(n=min(len(rows), IMPORTANCE_ROWS), random_state=seed)
    features = rows.drop(columns=[target])
    if features.columns.empty:
        return {}
    numeric = [pd.api.types.is_numeric_dtype(features[column]) for column in features.columns]
    # every column built first and joined once: inserting them one by one fragments the frame
    # (pandas warned 92 times on a 192-column table, issue 10 §4)
    encoded = pd.concat(
        [
            features[column].fillna(features[column].median()) if is_number
            else features[column].astype("string").fillna("").astype("category").cat.codes.rename(column)
            for column, is_number in zip(features.columns, numeric, strict=True)
        ],
        axis=1,
    )  # fmt: skip
    discrete = [not is_number for is_number in numeric]
    scorer = mutual_info_classif if classification else mutual_info_regression
    y = rows[target].astype(str) if classification else pd.to_numeric(rows[target])
    scores = scorer(encoded.to_numpy(float), y, discrete_features=np.array(discrete), random_state=seed)
    return dict(zip(encoded.columns.astype(str), scores.tolist(), strict=True))


def _varies_numerically(column: pd.Series) -> bool:
    """What the correlation heatmap draws: numbers (not booleans) with at least two distinct values."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column) and column.nunique(dropna=True) > 1


def _shown(names: list[str], total: int, noun: str, order: str) -> str:
    """'the 12 of 192 features <order>: a, b, ...', or '' when all are shown."""
    return f"the {len(names)} of {total} {noun} {order}: {', '.join(names)}" if len(names) < total else ""


def _column_table(frame: pd.DataFrame, importance: dict[str, float]) -> pd.DataFrame:
    names = frame.columns.astype(str)
    return pd.DataFrame(
        {
            "column": names,
            "dtype": frame.dtypes.astype(str).to_numpy(),
            "missing": frame.isna().sum().to_numpy(),
            "distinct": frame.nunique().to_numpy(),
            "mutual_information": [importance.get(name, np.nan) for name in names],  # NaN: the target
        }
    )
