"""`main`: every step as a child run of one pipeline run, reusing cached steps; and `status`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from trainwise.config import ProjectConfig
from trainwise.errors import TrackingError, TrainwiseError
from trainwise.identity import key_of
from trainwise.report import build_report
from trainwise.steps import STEP_NAMES, STEPS, artifacts, upstream_closure
from trainwise.steps.runner import TAG_STEP_RUN, StepOutcome, cache_keys, cache_parts, execute, fetch_weights, run_key
from trainwise.steps.staleness import newest_real_run, stale_reason
from trainwise.tracking import TAG_CACHE_KEY, TAG_CONFIG_HASH, TAG_DRY_RUN, StepRun, Tracker

log = logging.getLogger(__name__)

PIPELINE_STEP = "main"


def forced_steps(force: str | bool | None) -> set[str]:
    """`--force` values: a step name reruns it and every step after it; all/true reruns everything."""
    if force is None or force is False:
        return set()
    value = str(force).strip().lower()
    if value in ("", "false", "no", "0", "none"):
        return set()
    if value in ("all", "true", "yes", "1"):
        return set(STEP_NAMES)
    if value not in STEP_NAMES:
        raise TrackingError(f"--force {force!r}: expected a step name ({', '.join(STEP_NAMES)}) or 'all'")
    return set(STEP_NAMES[STEP_NAMES.index(value) :])


def selected_steps(first: str | None = None, last: str | None = None) -> list[str]:
    """`--from FIRST --to LAST`: from FIRST on (the steps before it must have current runs), up to
    LAST and only what LAST needs (`--to check` runs ingest, sample, prepare and check)."""
    for name in (first, last):
        if name is not None and name not in STEP_NAMES:
            raise TrackingError(f"no step named {name!r}; the steps are {', '.join(STEP_NAMES)}")
    chosen = list(STEP_NAMES)
    if last is not None:
        needed = {*upstream_closure(last), last}
        chosen = [s for s in chosen if s in needed]
    if first is not None:
        chosen = [s for s in chosen if STEP_NAMES.index(s) >= STEP_NAMES.index(first)]
    if not chosen:
        raise TrackingError(f"--from {first} --to {last}: no step lies between them ({last} runs before {first})")
    return chosen


def run_pipeline(
    cfg: ProjectConfig,
    tracker: Tracker,
    *,
    force: str | bool | None = None,
    skip_checks: bool = False,
    steps: list[str] | None = None,
) -> tuple[str, list[StepOutcome]]:
    """Run (or reuse) the steps (default: every one) under one pipeline run; returns its URL and the outcomes."""
    forced = forced_steps(force)
    chosen = set(steps or STEP_NAMES)
    fetch_weights(cfg, sorted(chosen))  # before the keys, which hold the weights' content
    keys = cache_keys(cfg, skip_checks=skip_checks)
    outcomes: list[StepOutcome] = []
    tags = {TAG_CONFIG_HASH: cfg.config_hash(), TAG_DRY_RUN: str(cfg.dry_run).lower()}
    with tracker.run(PIPELINE_STEP, tags=tags, run_name=f"pipeline {cfg.name}") as pipeline:
        pipeline.log_params(cfg.flat_params())
        pipeline.log_text(cfg.to_yaml(), "config.yaml")
        try:
            for spec in (spec for spec in STEPS if spec.name in chosen):
                outcome = execute(spec.name, cfg, tracker, parent=pipeline, force=spec.name in forced, keys=keys, skip_checks=skip_checks)
                outcomes.append(outcome)
        except TrainwiseError:  # a step refused (bad data, failed checks): the report still shows what ran before it
            _log_report(cfg, tracker, pipeline, outcomes)
            raise
        reported = _log_report(cfg, tracker, pipeline, outcomes)
        pipeline.set_description(_summary(cfg, outcomes, reported=reported))
        pipeline.log_metrics({"steps_ran": sum(o.state == "ran" for o in outcomes), "steps_reused": sum(o.state == "reused" for o in outcomes)})
    return pipeline.url, outcomes


def _log_report(cfg: ProjectConfig, tracker: Tracker, pipeline: StepRun, outcomes: list[StepOutcome]) -> bool:
    """report.html on the pipeline run, from the step runs; a failure to build it costs a warning, not the pipeline."""
    try:
        # the pipeline's step_run tags name every step run it started, the one that refused too
        tags = tracker.get_run(pipeline.run_id).data.tags
        runs = {step: tags[TAG_STEP_RUN + step] for step in STEP_NAMES if TAG_STEP_RUN + step in tags}
        runs |= {o.step: o.run_id for o in outcomes if o.run_id}
        if not runs:
            return False
        pipeline.log_text(build_report(cfg, tracker, runs), artifacts.REPORT)
    except Exception as exc:  # noqa: BLE001 - the report is a summary of runs that hold it all: never the reason a pipeline fails
        log.warning("the findings report could not be built (%s: %s); every step's run still holds its own findings", type(exc).__name__, exc)
        return False
    log.info("findings report: %s of the pipeline run", artifacts.REPORT)
    return True


def _summary(cfg: ProjectConfig, outcomes: list[StepOutcome], *, reported: bool = False) -> str:
    lines = [f"# Pipeline: {cfg.name}", ""]
    if reported:
        lines += [f"Every step's findings, and what to try next, on one page: `{artifacts.REPORT}` in this run's artifacts.", ""]
    lines += ["| step | state | run |", "|---|---|---|"]
    for outcome in outcomes:
        link = f"[{outcome.run_id}]({outcome.url})" if outcome.url else ""
        lines.append(f"| {outcome.step} | {outcome.state} | {link} |")
    return "\n".join(lines)


@dataclass
class StepStatus:
    step: str
    number: str
    state: str  # "fresh", "stale", "failed", "running", "never run"
    run_id: str | None = None
    url: str | None = None
    cache_key: str | None = None
    why: str = ""  # stale or never run: what changed since its newest finished run


def project_status(cfg: ProjectConfig, tracker: Tracker) -> tuple[list[StepStatus], str | None]:
    """Each step's newest run and whether it is current; and the next command to run."""
    parts = cache_parts(cfg)
    keys = {name: key_of(p) for name, p in parts.items()}
    statuses: list[StepStatus] = []
    next_command = None
    for spec in STEPS:
        key = run_key(spec.name, cfg, tracker, keys)
        cached = tracker.find_cached(spec.name, key)
        latest = newest_real_run(tracker, spec.name, status=None)
        if cached is not None:
            status = StepStatus(spec.name, spec.number, "fresh", cached.info.run_id, tracker.url_of(cached), key)
        elif latest is not None:
            state = {"FINISHED": "stale", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running"}.get(latest.info.status, "stale")
            status = StepStatus(spec.name, spec.number, state, latest.info.run_id, tracker.url_of(latest), latest.data.tags.get(TAG_CACHE_KEY))
        else:
            status = StepStatus(spec.name, spec.number, "never run", cache_key=key)
        if status.state in ("stale", "never run"):
            status.why = stale_reason(spec.name, cfg, tracker, parts)
        if next_command is None and status.state != "fresh":
            next_command = f"trainwise {spec.name} --project {cfg.project_ref}"
        statuses.append(status)
    return statuses, next_command
