"""Step 4, check: train simple models on the sample and prove the pipeline sound before spending compute.

Runs the pipeline checks (trainwise.checks.pipeline) and carries over the data checks of ingest,
sample and prepare, so one report answers "is it safe to train on the full data?". The result gates
`train`: it refuses to start unless this step passed for the same data and pipeline config.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from trainwise.checks import CheckResult, summary
from trainwise.checks.budget import CheckPlan
from trainwise.checks.labels import image_features, label_issue_checks
from trainwise.checks.pipeline import CheckSetup, plan_for, run_pipeline_checks
from trainwise.config import ProjectConfig
from trainwise.data.loading import PreparedData, augments_at_random, image_transforms
from trainwise.datacard import CardSection, render_html
from trainwise.fitting import balanced_training, build_model, engine_config, training_prior
from trainwise.metrics import CLASSIFICATION
from trainwise.steps import artifacts
from trainwise.steps.artifacts import TAG_CHECKS
from trainwise.steps.inputs import initial_weights, load_prepared_data
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)

CHECKS = artifacts.CHECKS
REPORT = "check_report.html"
LABEL_ISSUES = artifacts.LABEL_ISSUES


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    started = time.perf_counter()
    data = load_prepared_data(cfg, ctx, "sample")
    if data.is_image:
        train_transform, eval_transform = image_transforms(cfg, data)
    else:
        train_transform = eval_transform = _as_float
    init = initial_weights(cfg, ctx.tracker)  # the checks judge the model training will start from
    setup = CheckSetup(
        data=data,
        build_model=lambda: build_model(cfg, data, init_weights=init),
        engine=engine_config(cfg, data, epochs=cfg.checks.sample_epochs, early_stopping=False),
        train_transform=train_transform,
        eval_transform=eval_transform,
        thresholds=cfg.checks,
        prior_bias_init=cfg.model.prior_bias_init,
        init_prior=training_prior(cfg, data) if data.task == CLASSIFICATION else None,
        balanced=balanced_training(cfg) and data.task == CLASSIFICATION,
        pretrained=init is not None or cfg.model.weights is not None,  # the fresh-init checks do not apply to either
        freeze_backbone=cfg.model.freeze_backbone_epochs > 0,
        augmented=data.is_image and augments_at_random(cfg),
    )
    planning = time.perf_counter()
    plan = plan_for(setup)  # a few timed training steps, then what fits checks.budget_seconds
    setup = replace(setup, plan=plan)
    costs = {"loading": planning - started, "planning": time.perf_counter() - planning}
    log.info("check plan: %s", plan.describe())
    results = run_pipeline_checks(setup)
    labelling = time.perf_counter()
    labels = label_checks(cfg, run, data)
    if labels:  # one model and one cleanlab pass give both rows: counted once, on the first
        labels[0].seconds += time.perf_counter() - labelling
    results += labels + carried_over(cfg, ctx)
    costs["checks"] = sum(r.seconds for r in results)
    costs["total"] = time.perf_counter() - started  # up to here: logging the report follows
    passed = all(r.passed for r in results)

    rows = pd.DataFrame([r.to_dict() for r in results]).drop(columns=["extra"], errors="ignore")
    run.log_dict({"passed": passed, "checks": [r.to_dict() for r in results]}, CHECKS)
    run.log_table(rows, "checks_table.json")
    for result in results:
        if result.figure is not None:
            run.log_figure(result.figure, f"checks/{result.name}.png")
    metrics = {f"check.{r.name}": float(r.passed) for r in results} | {f"check_value.{r.name}": r.value for r in results}
    metrics |= {k: v for r in results for k, v in r.extra.items()}
    metrics |= {f"check_seconds.{r.name}": r.seconds for r in results} | {f"check_seconds.{k}": v for k, v in costs.items()}
    metrics |= {f"check_plan.estimated_seconds.{k}": v for k, v in plan.estimates.items()}
    run.log_metrics(metrics)
    run.log_params(plan.to_params())
    run.set_tags({TAG_CHECKS: summary(results)})
    run.log_text(render_html(f"{cfg.name}: pipeline checks ({summary(results)})", [_section(r) for r in results]), REPORT)
    run.set_description(_markdown(cfg, results, plan, costs))
    for result in results:
        if not result.passed:
            log.warning("check %s failed: %.4g vs %.4g: %s. %s", result.name, result.value, result.threshold, result.meaning, result.advice)
    log.info("check step: %.1f s (checks %.1f s, planning %.1f s)", costs["total"], costs["checks"], costs["planning"])
    return {"passed": passed, "checks": summary(results), "failed": [r.name for r in results if not r.passed], "seconds": costs["total"]}


def label_checks(cfg: ProjectConfig, run: StepRun, data: PreparedData) -> list[CheckResult]:
    """Confident learning on the sample's labelled items (train and validation); suspects logged as label_issues.csv."""
    if not cfg.task.is_classification:
        return []
    names = [name for name in ("train", "val") if name in data.splits]
    x = torch.cat([data.splits[name].x for name in names])
    labels = torch.cat([data.splits[name].y for name in names]).numpy()
    ids = [i for name in names for i in data.ids[name]]
    audit = label_issue_checks(
        image_features(x) if data.is_image else x.float().numpy(),
        labels,
        data.classes,
        max_share=cfg.checks.max_label_issue_share,
        max_class_share=cfg.checks.max_class_label_issue_share,
        seed=cfg.sample.seed,
        images=x.permute(0, 2, 3, 1).numpy() if data.is_image else None,
    )
    suspects = audit.suspects.assign(id=[ids[p] for p in audit.suspects["position"]]).drop(columns=["position"])
    run.log_frame(suspects[["id", "given", "suggested", "label_quality"]], LABEL_ISSUES)
    return audit.results


def carried_over(cfg: ProjectConfig, ctx: StepContext) -> list[CheckResult]:
    """The data checks of earlier steps, as rows of this report (so one table says whether to train)."""
    results = []
    quality = json.loads(ctx.upstream_artifact("ingest", artifacts.QUALITY).read_text())
    if "counts" in quality:  # images
        share = quality["counts"]["bad_fraction"]
        results.append(
            CheckResult(
                "data_quarantine_share",
                share <= cfg.data.max_bad_fraction,
                share,
                cfg.data.max_bad_fraction,
                "share of files quarantined by ingest",
                "see quarantine.csv of the ingest run",
            )
        )
    carried = (
        ("prepare", "leakage.json"), ("prepare", artifacts.CLASS_SIZES), ("prepare", artifacts.PROPERTY_CHECKS),
        ("sample", artifacts.REPRESENTATIVENESS),
    )  # fmt: skip
    for step, name in carried:
        for row in json.loads(ctx.upstream_artifact(step, name).read_text())["checks"]:
            results.append(CheckResult(f"data_{row['name']}", row["passed"], row["value"], row["threshold"], row["meaning"], row["advice"]))
    return results


def _section(result: CheckResult) -> CardSection:
    verdict = "PASSED" if result.passed else "FAILED"
    text = f"{verdict}: {result.value:.4g} (threshold {result.threshold:.4g}).\n\n{result.meaning}."
    if not result.passed:
        text += f"\n\nWhat to do: {result.advice}."
    return CardSection(f"{'✔' if result.passed else '✘'} {result.name}", text, {result.name: result.figure} if result.figure is not None else {})


def _markdown(cfg: ProjectConfig, results: list[CheckResult], plan: CheckPlan, costs: dict[str, float]) -> str:
    lines = [f"# {cfg.name}: pipeline checks, {summary(results)}", "", "| check | passed | value | threshold | seconds |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r.name} | {'yes' if r.passed else '**no**'} | {r.value:.4g} | {r.threshold:.4g} | {r.seconds:.1f} |" for r in results]
    lines += [
        f"| **total** | | | | {costs['total']:.1f} |",
        "",
        f"Seconds: {costs['checks']:.1f} in the checks, {costs['planning']:.1f} timing training steps to plan them, "
        f"{costs['loading']:.1f} loading the sample (a short fit is counted on the row it exists for: the real one on "
        "training_loss_decreases, which beats_trivial_baseline and destructive_augmentation reuse). "
        f"Plan: {plan.describe()}.",
        "",
        f"Figures under `checks/`, the full report in `{REPORT}`.",
    ]
    return "\n".join(lines)


def _as_float(x: Any) -> Any:
    return x.float()
