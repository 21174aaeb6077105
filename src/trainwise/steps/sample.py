"""Step 2C, sample: a small stratified sample, and checks that it is a fair miniature of the full data.

The pipeline checks (step 4) train on this sample, so a sample that misrepresents the data would
make them pass or fail for the wrong reasons.
"""

from __future__ import annotations

import logging
from typing import Any

from trainwise.checks import summary
from trainwise.checks.representativeness import representativeness
from trainwise.config import ProjectConfig
from trainwise.data.manifest import data_digest
from trainwise.data.sampling import strata, stratified_sample
from trainwise.data.splitting import full_splits
from trainwise.steps import artifacts
from trainwise.steps.artifacts import TAG_CHECKS
from trainwise.steps.inputs import load_ingested
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    data = load_ingested(cfg, ctx)
    # Drawn from the full data's training split only: validation and test items never reach the
    # checks, nor a study tuned on the sample.
    assigned = full_splits(
        data.pool, data.label, cfg.split, classification=cfg.task.is_classification, is_image=cfg.task.is_image,
        test_provided=data.test_labelled, given=data.given_split,
    )  # fmt: skip
    pool = data.pool[assigned == "train"]
    groups = strata(pool[data.label], classification=cfg.task.is_classification)
    chosen, notes = stratified_sample(groups, size=cfg.sample.size, fraction=cfg.sample.fraction, seed=cfg.sample.seed)
    sample = pool.loc[chosen]
    report = representativeness(
        pool,
        sample,
        label=data.label if cfg.task.is_classification else "",
        properties=data.properties,
        max_label_distance=cfg.checks.max_label_distance,
        max_drift=cfg.checks.max_property_drift,
        # an image has a few properties, a row each; a table may have hundreds of columns: one row
        per_property=cfg.task.is_image,
    )
    results = report.checks

    run.log_frame(sample.reset_index(drop=True), artifacts.SAMPLE)  # the manifest rows (or table rows) of the sample
    run.log_dict({"checks": [r.to_dict() for r in results], "notes": notes}, artifacts.REPRESENTATIVENESS)
    run.log_frame(report.drift, artifacts.SAMPLE_DRIFT)  # every compared column's statistic, not only those a row names
    for result in results:
        if result.figure is not None:
            run.log_figure(result.figure, f"checks/{result.name}.png")
    run.log_metrics({"sample_size": len(sample), "pool_size": len(pool), **{f"check.{r.name}": float(r.passed) for r in results}})
    run.set_tags({TAG_CHECKS: summary(results)})
    run.log_dataset(
        name=f"{cfg.name}-sample",
        digest=data_digest((str(i), str(label)) for i, label in zip(sample["id"], sample[data.label], strict=True)),
        source=f"sample of the {len(pool)} items of the full training split, seed {cfg.sample.seed}",
        context="sample",
        profile={"items": len(sample)},
    )
    run.set_description(_markdown(cfg, len(sample), len(pool), results, notes))
    for note in notes:
        log.info("%s: %s", cfg.name, note)
    failed = [r.name for r in results if not r.passed]
    if failed:
        log.warning("%s: the sample differs from the full data in %s (see representativeness.json)", cfg.name, ", ".join(failed))
    return {"sample_size": len(sample), "checks": summary(results)}


def _markdown(cfg: ProjectConfig, n: int, total: int, results: list, notes: list[str]) -> str:
    lines = [f"# {cfg.name}: sample", "", f"{n:,} of {total:,} items ({n / max(total, 1):.1%}), stratified, seed {cfg.sample.seed}.", ""]
    lines += ["| check | passed | value | threshold |", "|---|---|---:|---:|"]
    lines += [f"| {r.name} | {'yes' if r.passed else '**no**'} | {r.value:.3f} | {r.threshold:.3f} |" for r in results]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


