"""trainwise from Python: the functions the CLI calls, for notebooks and scripts.

    import trainwise.api as tw
    project = tw.open_project("projects/digits")            # config + tracking server (started if local and absent)
    tw.run_step(project, "check", with_upstream=True)      # one step, reusing what is current
    tw.check_table(project, tw.run_step(project, "check"))  # the check rows as a DataFrame
    tw.run_pipeline(project)                                # every step, as `trainwise run`

Every step runs exactly as from the command line (the same MLflow runs, cache keys and checks);
errors are trainwise's own exceptions (trainwise.errors), with the messages the CLI prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainwise.config import ProjectConfig, load_config
from trainwise.errors import ChecksFailedError, ConfigError
from trainwise.paths import trainwise_home
from trainwise.server import ensure_tracking_uri
from trainwise.steps.runner import StepOutcome
from trainwise.tracking import Tracker

# The options some steps take beyond the shared ones (the CLI's --storage, --rollback and --model).
STEP_OPTIONS: dict[str, set[str]] = {"tune": {"storage"}, "promote": {"rollback"}, "submit": {"model_uri"}}

__all__ = ["Project", "StepOutcome", "artifact", "check_table", "open_project", "run_pipeline", "run_step"]


@dataclass
class Project:
    """A loaded project.yaml (with overrides) and the tracker of its MLflow experiment."""

    cfg: ProjectConfig
    tracker: Tracker

    @property
    def experiment_url(self) -> str:
        return self.tracker.experiment_url


def open_project(project: str | Path, overrides: Iterable[str] = (), *, dry_run: bool = False) -> Project:
    """Load `project` (a folder or its project.yaml; `overrides` as `--set` takes them) and connect to its
    tracking server ($MLFLOW_TRACKING_URI, else a local one, started when none runs)."""
    cfg = load_config(project, tuple(overrides), dry_run=dry_run)
    return Project(cfg, connect(cfg))


def connect(cfg: ProjectConfig) -> Tracker:
    """The tracker of the project's experiment, after the housekeeping every command does first."""
    tracker = Tracker(cfg.name, ensure_tracking_uri())
    tracker.flush_spools()  # what ended runs kept while the server was away
    tracker.end_orphaned_runs()  # runs whose process was killed outright: FAILED, not RUNNING forever
    return tracker


def run_step(
    project: Project,
    step: str,
    *,
    force: bool = False,
    with_upstream: bool = False,
    skip_checks: bool = False,
    resume: bool = False,
    **options: Any,
) -> StepOutcome:
    """Run one step (or reuse its current run), as `trainwise STEP`; `with_upstream` first runs the stale
    steps it needs. A gating step whose checks fail raises ChecksFailedError after its run is logged."""
    from trainwise.steps.runner import cache_keys, execute, fetch_weights, stale_upstream

    unknown = sorted(set(options) - STEP_OPTIONS.get(step, set()))
    if unknown:
        takes = ", ".join(sorted(STEP_OPTIONS.get(step, set()))) or "none"
        raise ConfigError(f"run_step({step!r}): unknown option {', '.join(unknown)}; its options: {takes}")
    cfg, tracker = project.cfg, project.tracker
    fetch_weights(cfg, [step])  # before any key (they hold the weights' content) and any upstream step runs
    chosen = {k: v for k, v in options.items() if v not in ("", False, None)}
    if with_upstream:
        keys = cache_keys(cfg, skip_checks=skip_checks)
        for name in stale_upstream(step, cfg, tracker, keys, skip_checks=skip_checks, options=chosen):
            _gate(execute(name, cfg, tracker, keys=keys, skip_checks=skip_checks))
    outcome = execute(step, cfg, tracker, force=force or resume, skip_checks=skip_checks, resume=resume, options=chosen)
    return _gate(outcome)


def upstream_to_run(project: Project, step: str, *, skip_checks: bool = False, **options: Any) -> list[str]:
    """The steps `step` needs that have no current run (what `with_upstream` runs first)."""
    from trainwise.steps.runner import cache_keys, fetch_weights, stale_upstream

    fetch_weights(project.cfg, [step])
    keys = cache_keys(project.cfg, skip_checks=skip_checks)
    chosen = {k: v for k, v in options.items() if v not in ("", False, None)}
    return stale_upstream(step, project.cfg, project.tracker, keys, skip_checks=skip_checks, options=chosen)


def run_pipeline(
    project: Project, *, first: str | None = None, last: str | None = None, force: str | bool | None = None, skip_checks: bool = False
) -> tuple[str, list[StepOutcome]]:
    """Every step (or `first`..`last`, as `--from/--to`) under one pipeline run; its URL and the outcomes."""
    from trainwise.steps import pipeline

    steps = pipeline.selected_steps(first, last)
    return pipeline.run_pipeline(project.cfg, project.tracker, force=force, skip_checks=skip_checks, steps=steps)


def artifact(project: Project, outcome: StepOutcome, path: str) -> Path:
    """A local copy of one artifact of a step's run (downloaded once, under $TRAINWISE_HOME/artifacts)."""
    assert outcome.run_id is not None
    local = trainwise_home() / "artifacts" / outcome.run_id / path
    if not local.exists():
        project.tracker.download_artifact(outcome.run_id, path, trainwise_home() / "artifacts" / outcome.run_id)
    return local


def check_table(project: Project, outcome: StepOutcome) -> pd.DataFrame:
    """The check step's rows (name, passed, value, threshold, meaning, advice, seconds) as a DataFrame."""
    rows = json.loads(artifact(project, outcome, "checks.json").read_text())["checks"]
    columns = ["name", "passed", "value", "threshold", "seconds", "meaning", "advice"]
    return pd.DataFrame(rows).reindex(columns=[c for c in columns if any(c in r for r in rows)])


def _gate(outcome: StepOutcome) -> StepOutcome:
    if outcome.passed is False:
        failed = ", ".join(outcome.outputs.get("failed", [])) or "see the run"
        raise ChecksFailedError(f"{outcome.step}: checks failed ({failed}); the report is in {outcome.url}")
    return outcome
