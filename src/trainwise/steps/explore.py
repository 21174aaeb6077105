"""Step 2B, explore: the figures a person looks at before training, and one HTML data card with all of them.

Every figure is logged as a PNG under plots/ (the MLflow UI previews them) and embedded, with the
tables, in data_card.html. Pixel statistics come from the ingest manifest; only the few images a
figure shows (a grid per class, class means, duplicate groups) are decoded here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from trainwise import plots
from trainwise.config import ProjectConfig
from trainwise.data.images import ImageProblem, read_image, resize
from trainwise.data.manifest import OK, QUARANTINED
from trainwise.data.records import TRAIN, list_images
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


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    sections = _explore_images(cfg, ctx) if cfg.task.is_image else _explore_table(cfg, ctx)
    for section in sections:
        for name, figure in section.figures.items():
            if isinstance(figure, Figure):
                run.log_figure(figure, f"plots/{name}.png")
    run.log_text(render_html(f"{cfg.name}: data card", sections), DATA_CARD)
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
    train = usable[usable["split"] == TRAIN]
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
    return [
        CardSection("Overview", overview, tables={"Columns": _column_table(frame)}),
        CardSection("Target", "", {"target_distribution": plots.target_distribution(frame[target], classification=classification)}),
        CardSection("Features by target", "", {"feature_distributions": plots.feature_distributions(frame, target, classification=classification)}),
        CardSection("Missing values", "", {"missingness": plots.missingness(frame)}),
        CardSection("Correlations", "Pearson correlation of the numeric columns.", {"correlation_heatmap": plots.correlation_heatmap(frame)}),
        CardSection(
            "Feature importance",
            "Mutual information between each feature and the target (a quick, model-free ranking).",
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
    encoded = pd.DataFrame(index=features.index)
    discrete = []
    for column in features.columns:
        series = features[column]
        if pd.api.types.is_numeric_dtype(series):
            encoded[column] = series.fillna(series.median())
            discrete.append(False)
        else:
            encoded[column] = series.astype("string").fillna("").astype("category").cat.codes
            discrete.append(True)
    if encoded.empty:
        return {}
    scorer = mutual_info_classif if classification else mutual_info_regression
    y = rows[target].astype(str) if classification else pd.to_numeric(rows[target])
    scores = scorer(encoded.to_numpy(float), y, discrete_features=np.array(discrete), random_state=seed)
    return dict(zip(encoded.columns.astype(str), scores.tolist(), strict=True))


def _column_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "column": frame.columns.astype(str),
            "dtype": frame.dtypes.astype(str).to_numpy(),
            "missing": frame.isna().sum().to_numpy(),
            "distinct": frame.nunique().to_numpy(),
        }
    )
