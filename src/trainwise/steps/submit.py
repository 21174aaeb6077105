"""Step 7, submit: predict the test set with the champion and log a validated submission file.

The model is `models:/<registry.model_name>@champion` (pinned to the version the alias points at
when the step starts), or the one given with `--model`. It predicts from the raw test files or
rows, as a served model would. The file is written in the project's format, read back and checked
(submission.py) before it is logged; when the project has answers for its test set (the digits
project keeps `answers.csv` beside its test folder; a labelled test split is its own answer), the
score is logged too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainwise import plots
from trainwise.config import DigitsSource, ProjectConfig
from trainwise.data.manifest import OK
from trainwise.data.records import TEST, TRAIN, list_images
from trainwise.errors import TrackingError
from trainwise.paths import trainwise_home
from trainwise.serving import TTA_PARAM, supports_tta
from trainwise.steps import artifacts
from trainwise.steps.artifacts import TAG_DIGEST
from trainwise.steps.inputs import table_rows
from trainwise.steps.runner import StepContext
from trainwise.submission import (
    Score,
    SubmissionError,
    SubmissionSpec,
    build_submission,
    predicted_values,
    read_answers,
    score_submission,
    submission_spec,
    validate_file,
    write_submission,
)
from trainwise.tracking import CHAMPION, ModelVersionInfo, Registry, StepRun, load_pyfunc

log = logging.getLogger(__name__)

SUBMISSION = "submission.csv"
PREDICTED_CLASSES = "predicted_classes.csv"
TAG_MODEL_URI = "trainwise.model_uri"
TAG_MODEL_VERSION = "trainwise.model_version"
TAG_MODEL_NAME = "trainwise.model_name"


@dataclass
class SubmitItems:
    """What the model predicts: one row of raw input per item, its id, and its answer when known."""

    ids: list[str]
    inputs: pd.DataFrame  # images: column `image` (file paths); tables: the raw feature columns
    split: str  # "submit" (unlabelled) or "test" (labelled)
    answers: pd.DataFrame | None  # columns id, answer


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    model_uri, version = _model(cfg, ctx)
    digest = ctx.tracker.get_run(ctx.upstream["ingest"]).data.tags.get(TAG_DIGEST, "")
    tags = {TAG_MODEL_URI: model_uri, TAG_DIGEST: digest}
    if version is not None:
        tags |= {TAG_MODEL_NAME: version.name, TAG_MODEL_VERSION: version.version}
        trained_on = version.tags.get(TAG_DIGEST)
        if trained_on and digest and trained_on != digest:
            log.warning(
                "%s version %s was trained on data %s; the test set here comes from data %s",
                version.name,
                version.version,
                trained_on,
                digest,
            )
    run.set_tags(tags)

    splits = pd.read_parquet(ctx.upstream_artifact("prepare", artifacts.SPLITS))
    items = submit_items(cfg, ctx, splits)
    # Fails on a sample that does not fit the settings before anything is predicted.
    spec = submission_spec(
        id_column=cfg.submission.id_column,
        target_column=cfg.submission.target_column,
        kind=cfg.submission.format if cfg.task.is_classification else "regression",
        classes=known_classes(splits) if cfg.task.is_classification else (),
        ids=items.ids,
        sample=sample_submission(cfg),
    )
    log.info("%s: predicting %d %s items with %s", cfg.name, len(items.ids), items.split, model_uri)
    model = load_pyfunc(model_uri, tracking_uri=ctx.tracker.tracking_uri)
    tta = cfg.submission.tta
    if tta != "none" and not supports_tta(model):
        raise SubmissionError(
            f"submission.tta {tta!r}: {model_uri} was logged before test-time augmentation existed and would ignore it; "
            "train or tune it again, or set submission.tta: none"
        )
    if tta == "flip" and not cfg.task.is_image:
        raise SubmissionError("submission.tta 'flip' mirrors images; this project's inputs are table rows: set submission.tta: none")
    if tta == "flip" and not cfg.augment.flip:
        log.warning("submission.tta flip: the model never saw mirrored images in training (augment.flip is false)")
    predictions = model.predict(items.inputs, params={TTA_PARAM: tta}) if tta != "none" else model.predict(items.inputs)

    path = write_submission(
        build_submission(spec, items.ids, predictions), trainwise_home() / "submissions" / run.run_id / SUBMISSION
    )
    written = validate_file(path, spec)  # what is logged is what was checked
    run.log_artifact(path)
    metrics: dict[str, float] = {"rows": len(written)}
    metrics |= _prediction_summary(run, written, spec)

    score = _score(cfg, written, spec, items)
    if score is not None:
        metrics |= {score.metric: score.value, "scored_rows": score.rows, **score.also}
    run.log_metrics(metrics)
    run.set_description(
        _markdown(
            cfg,
            items,
            model_uri=model_uri,
            version=version,
            rows=len(written),
            score=score,
            artifact=run.artifact_uri(SUBMISSION),
        )
    )
    if score is not None:
        log.info("%s: %s %.4f on %d rows", cfg.name, score.metric, score.value, score.rows)
    return {
        "rows": len(written),
        "score": score.value if score else None,
        "path": run.artifact_uri(SUBMISSION),
        "file": str(path),
    }


def _model(cfg: ProjectConfig, ctx: StepContext) -> tuple[str, ModelVersionInfo | None]:
    """The model to predict with: --model as given, else the champion's version (pinned, so the alias may move meanwhile)."""
    given = ctx.options.get("model_uri")
    if given:
        return str(given), None
    name = cfg.registry.model_name or cfg.name
    champion = Registry(ctx.tracker.tracking_uri).by_alias(name, CHAMPION)
    if champion is None:
        raise TrackingError(
            f"registered model {name!r} has no {CHAMPION!r} version on {ctx.tracker.tracking_uri}; run "
            f"`trainwise promote --project {cfg.project_ref}` (or `trainwise run`) first, or name a model with --model"
        )
    return champion.uri, champion


def known_classes(splits: pd.DataFrame) -> list[str]:
    """The class names in the model's index order (as loading.load_prepared orders them)."""
    labelled = splits[(splits["scope"] == "full") & splits["label"].notna()]
    return sorted(labelled["label"].astype(str).unique())


def submit_items(cfg: ProjectConfig, ctx: StepContext, splits: pd.DataFrame) -> SubmitItems:
    """The provided unlabelled test set when there is one (split `submit`), else the labelled `test` split."""
    full = splits[splits["scope"] == "full"]
    rows = full[full["split"] == "submit"]
    split = "submit" if len(rows) else "test"
    rows = rows if len(rows) else full[full["split"] == "test"]
    if rows.empty:
        raise TrackingError(f"prepare's splits of {cfg.name} hold no test items (neither a `submit` nor a `test` split)")
    ids = rows["id"].astype(str).tolist()
    answers = pd.DataFrame({"id": ids, "answer": rows["label"].to_numpy()}) if split == "test" else None
    if cfg.task.is_image:
        return SubmitItems(ids, _image_inputs(cfg, ctx, ids), split, answers)
    return SubmitItems(ids, _table_inputs(cfg, ctx, ids), split, answers)


def _image_inputs(cfg: ProjectConfig, ctx: StepContext, ids: list[str]) -> pd.DataFrame:
    manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST))
    usable = manifest[manifest["status"] == OK]
    # Test items are the provided test set when there is one; else the held-out part of the pool.
    usable = usable[usable["split"] == (TEST if (usable["split"] == TEST).any() else TRAIN)].set_index("id")
    root = list_images(cfg).root
    return pd.DataFrame({"image": [str(root / usable.at[i, "path"]) for i in ids]})


def _table_inputs(cfg: ProjectConfig, ctx: StepContext, ids: list[str]) -> pd.DataFrame:
    # The raw columns, as the model's input example had them (no id, no target).
    return table_rows(cfg, ctx).loc[ids].drop(columns=["id", cfg.task.target], errors="ignore").reset_index(drop=True)


def sample_submission(cfg: ProjectConfig) -> Path | None:
    """The configured sample submission, or the one the digits folder comes with."""
    if cfg.submission.sample_submission is not None:
        return cfg.submission.sample_submission
    source = cfg.data.source
    if isinstance(source, DigitsSource) and source.root is not None and (source.root / "sample_submission.csv").is_file():
        return source.root / "sample_submission.csv"
    return None


def hidden_answers(cfg: ProjectConfig) -> Path | None:
    """Answers to the unlabelled test set kept apart from the data (the digits project's answers.csv)."""
    source = cfg.data.source
    if isinstance(source, DigitsSource) and source.root is not None and (source.root / "answers.csv").is_file():
        return source.root / "answers.csv"
    return None


def _score(cfg: ProjectConfig, written: pd.DataFrame, spec: SubmissionSpec, items: SubmitItems) -> Score | None:
    answers = items.answers
    if answers is None and (found := hidden_answers(cfg)) is not None:
        answers = read_answers(found, spec)
    return score_submission(written, spec, answers) if answers is not None else None


def _prediction_summary(run: StepRun, written: pd.DataFrame, spec: SubmissionSpec) -> dict[str, float]:
    """Predicted class shares (a table and a figure), or the predictions' spread for regression."""
    predicted = predicted_values(written, spec)
    if spec.kind == "regression":
        values = predicted.astype("float64")
        return {
            "prediction_mean": values.mean(),
            "prediction_std": values.std(ddof=0),
            "prediction_min": values.min(),
            "prediction_max": values.max(),
        }
    counts = predicted.value_counts().reindex(list(spec.classes), fill_value=0)
    table = pd.DataFrame({"class": counts.index, "rows": counts.to_numpy(), "share": counts.to_numpy() / max(len(predicted), 1)})
    run.log_frame(table, PREDICTED_CLASSES)
    run.log_figure(
        plots.class_distribution(dict(counts.items()), title="Predicted classes on the test set"), "predicted_classes.png"
    )
    return {f"share.{row.cls}": row.share for row in table.rename(columns={"class": "cls"}).itertuples()}


def _what(cfg: ProjectConfig) -> str:
    if not cfg.task.is_classification:
        return f"the prediction in column `{cfg.submission.target_column}`"
    if cfg.submission.format == "probabilities":
        return "one probability column per class"
    return f"the class {'name' if cfg.submission.format == 'label' else 'index'} in column `{cfg.submission.target_column}`"


def _markdown(
    cfg: ProjectConfig,
    items: SubmitItems,
    *,
    model_uri: str,
    version: ModelVersionInfo | None,
    rows: int,
    score: Score | None,
    artifact: str,
) -> str:
    lines = [f"# {cfg.name}: submission", ""]
    model = f"`{model_uri}`" + (
        f" (version {version.version} of {version.name}, alias {CHAMPION})" if version is not None else " (given with --model)"
    )
    lines += [
        f"Model: {model}.",
        "",
        f"{rows:,} rows, one per {items.split} item, {_what(cfg)}: `{artifact}`.",
    ]
    if score is not None:
        name = score.metric.removeprefix("submission_")
        also = "".join(f", {k.removeprefix('submission_')} {v:.4f}" for k, v in score.also.items())
        lines += ["", f"**Score on the test set's answers: {name} {score.value:.4f}{also}** ({score.rows:,} rows scored)."]
    return "\n".join(lines)
