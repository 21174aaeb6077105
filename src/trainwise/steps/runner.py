"""Runs one step: cache lookup, the MLflow run around it, provenance, and its upstream runs.

A FINISHED run with the same cache key is reused instead of rerun (`force` reruns). Keys are built
by trainwise.identity from named parts, each logged as a tag, so they are known before any run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainwise.config import ProjectConfig
from trainwise.data.sources import fingerprint
from trainwise.errors import TrackingError
from trainwise.identity import key_of, key_parts, part_tags
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash
from trainwise.steps import STEPS, get_step, upstream_closure
from trainwise.steps.staleness import TAG_REUSED, stale_reason
from trainwise.tracking import (
    JOIN_RUN_ENV,
    TAG_CACHE_KEY,
    TAG_CONFIG_HASH,
    TAG_DRY_RUN,
    TAG_UPSTREAM,
    Registry,
    StepRun,
    Tracker,
    is_alias_uri,
)

log = logging.getLogger(__name__)

TAG_PASSED = "trainwise.passed"  # set by gating steps (check): "true" or "false"
TAG_SKIP_CHECKS = "trainwise.skip_checks"
TAG_STEP_RUN = "trainwise.step_run."  # + step name, on the pipeline run


@dataclass
class StepContext:
    """What a step gets besides its config: the tracker and its upstream steps' runs."""

    tracker: Tracker
    upstream: dict[str, str] = field(default_factory=dict)  # step name -> run id
    dry_run: bool = False
    skip_checks: bool = False  # train without a passed check run (recorded as a tag)
    resume_from: str | None = None  # the run being resumed (its local checkpoint is read by the step)
    options: dict[str, Any] = field(default_factory=dict)  # step-specific CLI options (promote --rollback, ...)

    def upstream_artifact(self, step: str, artifact_path: str) -> Path:
        """A local copy of an upstream run's artifact (downloaded once: finished runs never change)."""
        run_id = self.upstream[step]
        folder = trainwise_home() / "artifacts" / run_id
        local = folder / artifact_path
        if not local.exists():
            self.tracker.download_artifact(run_id, artifact_path, folder)
        return local


@dataclass
class StepOutcome:
    step: str
    state: Literal["ran", "reused"]
    cache_key: str
    run_id: str | None = None
    url: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None  # gating steps only


def cache_parts(cfg: ProjectConfig, *, skip_checks: bool = False) -> dict[str, dict[str, Any]]:
    """Every step's identity parts (trainwise.identity), upstream first; the source is fingerprinted once."""
    source_print = None
    keys: dict[str, str] = {}
    parts: dict[str, dict[str, Any]] = {}
    for spec in STEPS:
        if spec.reads_source and source_print is None:
            source_print = fingerprint(cfg)
        parts[spec.name] = key_parts(
            spec.name,
            spec.sections,
            {name: keys[name] for name in spec.upstream},
            cfg,
            source=source_print if spec.reads_source else None,
            skip_checks=skip_checks,
            ignores=spec.ignores,
        )
        keys[spec.name] = key_of(parts[spec.name])
    return parts


def cache_keys(cfg: ProjectConfig, *, skip_checks: bool = False) -> dict[str, str]:
    """Every step's cache key, upstream first."""
    return {name: key_of(parts) for name, parts in cache_parts(cfg, skip_checks=skip_checks).items()}


def execute(
    step: str,
    cfg: ProjectConfig,
    tracker: Tracker,
    *,
    parent: StepRun | None = None,
    force: bool = False,
    keys: Mapping[str, str] | None = None,
    skip_checks: bool = False,
    resume: bool = False,
    options: Mapping[str, Any] | None = None,
) -> StepOutcome:
    """Run `step` (or reuse its cached run) and return where its results are."""
    spec = get_step(step)
    module = spec.load()
    fetch_weights(cfg, [step])
    if keys is None:
        every = cache_parts(cfg, skip_checks=skip_checks)
        parts, keys = every[step], {name: key_of(p) for name, p in every.items()}
    else:  # the pipeline's keys: only this step's own parts are needed (the source is hashed once)
        source = fingerprint(cfg) if spec.reads_source else None
        parts = key_parts(
            step, spec.sections, {n: keys[n] for n in spec.upstream}, cfg, source=source, skip_checks=skip_checks, ignores=spec.ignores
        )
    options = dict(options or {})
    key = run_key(step, cfg, tracker, keys, options)

    rollback = bool(options.get("rollback"))
    if not force and not rollback:  # a rollback always acts: the same alias state can recur
        cached = tracker.find_cached(step, key)
        if cached is not None:
            url = tracker.url_of(cached)
            log.info("%s: inputs unchanged, reusing run %s (%s)", step, cached.info.run_id, url)
            if parent is not None:
                parent.set_tags({TAG_STEP_RUN + step: cached.info.run_id})
            elif os.environ.get(JOIN_RUN_ENV):
                _record_reuse(tracker, step, cached.info.run_id, url)
            gate = cached.data.tags.get(TAG_PASSED)
            return StepOutcome(step, "reused", key, cached.info.run_id, url, passed=None if gate is None else gate == "true")

    optional = optional_upstream(step, skip_checks=skip_checks, options=options)
    upstream = _upstream_runs(tuple(u for u in spec.upstream if u not in optional), tracker, keys, cfg, step=step, skip_checks=skip_checks, options=options)
    for name in optional & set(spec.upstream):
        if (found := tracker.find_cached(name, run_key(name, cfg, tracker, keys))) is not None:
            upstream[name] = found.info.run_id
    reopen = _interrupted_run(tracker, step, key) if resume else None
    tags = {
        TAG_CACHE_KEY: key,
        TAG_CONFIG_HASH: cfg.config_hash(),
        TAG_DRY_RUN: str(cfg.dry_run).lower(),
        **{TAG_UPSTREAM + name: run_id for name, run_id in upstream.items()},
        **part_tags(parts),
    }
    if skip_checks:
        tags[TAG_SKIP_CHECKS] = "true"
    context = StepContext(tracker, upstream, cfg.dry_run, skip_checks=skip_checks, resume_from=reopen, options=options)
    with tracker.run(step, tags=tags, parent=parent, reopen=reopen) as run:
        if parent is not None:
            parent.set_tags({TAG_STEP_RUN + step: run.run_id})
        if reopen is None:  # a reopened run has its params already (and they cannot change)
            run.log_params(cfg.flat_params())
            run.log_text(cfg.to_yaml(), "config.yaml")
        outputs = module.run(cfg, run, context) or {}
        if "passed" in outputs:
            run.set_tags({TAG_PASSED: str(bool(outputs["passed"])).lower()})
    return StepOutcome(step, "ran", key, run.run_id, run.url, outputs, passed=outputs.get("passed"))


def fetch_weights(cfg: ProjectConfig, steps: list[str]) -> None:
    """Download model.weights (when missing and allowed) before keying steps whose identity holds them.

    The key of a step that builds the model, or reads from one that does, holds the sha256 of the
    weights' file: fetched only inside the run, the file would be absent while the key was built,
    and the next command would compute another key and find neither that run nor its descendants.
    Offline and not in the cache: a ConfigError naming the file to place and where.
    """
    if cfg.model.weights is None:
        return
    if any("model" in get_step(name).sections or any("model" in get_step(u).sections for u in upstream_closure(name)) for name in steps):
        from trainwise.fitting import pretrained_weights

        pretrained_weights(cfg, fetch=True)


def optional_upstream(step: str, *, skip_checks: bool = False, options: Mapping[str, Any] | None = None) -> set[str]:
    """The upstream steps `step` runs without, given its options: its declared optional ones, check when
    checks are skipped, promote when a model is given (--model), every one for a rollback."""
    spec, options = get_step(step), options or {}
    optional = set(spec.optional_upstream) | ({"check"} if skip_checks else set()) | ({"promote"} if options.get("model_uri") else set())
    if options.get("rollback"):  # moving aliases back needs no upstream results
        optional |= set(spec.upstream)
    return optional


def needed_upstream(step: str, *, skip_checks: bool = False, options: Mapping[str, Any] | None = None) -> list[str]:
    """Every step `step` cannot run without, directly or through others, in pipeline order."""
    without = lambda name: optional_upstream(name, skip_checks=skip_checks, options=options if name == step else None)  # noqa: E731
    return list(upstream_closure(step, without))


def _upstream_runs(
    names: tuple[str, ...],
    tracker: Tracker,
    keys: Mapping[str, str],
    cfg: ProjectConfig,
    *,
    step: str = "",
    skip_checks: bool = False,
    options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    found, missing = {}, []
    for name in names:
        run = tracker.find_cached(name, run_key(name, cfg, tracker, keys))
        if run is None:
            missing.append(name)
        else:
            found[name] = run.info.run_id
    if missing:
        raise TrackingError(missing_upstream_message(step, missing, cfg, tracker, keys, skip_checks=skip_checks, options=options))
    return found


def stale_upstream(
    step: str, cfg: ProjectConfig, tracker: Tracker, keys: Mapping[str, str], *, skip_checks: bool = False, options: Mapping[str, Any] | None = None
) -> list[str]:
    """The steps `step` needs (`needed_upstream`) that have no finished run for this config."""
    names = needed_upstream(step, skip_checks=skip_checks, options=options)
    return [name for name in names if tracker.find_cached(name, run_key(name, cfg, tracker, keys)) is None]


def missing_upstream_message(
    step: str,
    missing: list[str],
    cfg: ProjectConfig,
    tracker: Tracker,
    keys: Mapping[str, str],
    *,
    skip_checks: bool = False,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Which upstream steps are missing or stale and why (the settings that changed), and the commands that run them."""
    parts = cache_parts(cfg, skip_checks=skip_checks)
    reasons = "; ".join(f"{name}: {stale_reason(name, cfg, tracker, parts)}" for name in missing)
    project = cfg.project_ref
    would_run = stale_upstream(step, cfg, tracker, keys, skip_checks=skip_checks, options=options) if step else missing
    target = f"`trainwise {step} --with-upstream --project {project}` or `trainwise run --to {step} --project {project}`" if step else (
        f"`trainwise run --project {project}`"
    )
    return (
        f"{step or 'this step'} needs {', '.join(missing)}, with no finished run for this config and data ({reasons}). "
        f"{target} runs {', '.join(would_run)} first (the steps with a current run are reused)"
    )


def run_key(
    step: str, cfg: ProjectConfig, tracker: Tracker, keys: Mapping[str, str], options: Mapping[str, Any] | None = None
) -> str:
    """The key a step's run is tagged with: its config key, plus what it reads from the registry now
    and its options (--model, --rollback). Upstream lookups must use this too, not the bare key."""
    spec = get_step(step)
    init = cfg.model.init if "model" in spec.sections else None
    moving_init = init is not None and is_alias_uri(init)
    if not spec.reads_registry and not options and not moving_init:
        return keys[step]
    state: dict[str, Any] = registry_state(cfg, tracker, spec.reads_registry)
    if moving_init:  # model.init through an alias: keyed on the version it points at now
        state["model.init"] = Registry(tracker.tracking_uri).pin(init)
    return short_hash({"key": keys[step], "registry": state, "options": dict(options or {})}, 20)


def registry_state(cfg: ProjectConfig, tracker: Tracker, aliases: tuple[str, ...]) -> dict[str, str | None]:
    """The versions these aliases of the project's model point at now.

    promote is keyed on the challenger it judges (not on the champion, which it moves itself: a
    second unchanged run must find it cached); submit on the champion that predicts.
    """
    if not aliases:
        return {}
    registry = Registry(tracker.tracking_uri)
    name = cfg.registry.model_name or cfg.name
    state = {}
    for alias in aliases:
        found = registry.by_alias(name, alias)
        state[alias] = found.version if found else None
    return state


def _interrupted_run(tracker: Tracker, step: str, key: str) -> str | None:
    """The newest KILLED or FAILED run of `step` with this key that left a checkpoint to resume from."""
    for status in ("KILLED", "FAILED"):
        for candidate in tracker.search({"trainwise.step": step, TAG_CACHE_KEY: key}, status=status, max_results=5):
            if checkpoint_dir(candidate.info.run_id).joinpath("last.pt").is_file():
                started = time.strftime("%Y-%m-%d %H:%M", time.localtime(candidate.info.start_time / 1000))
                log.info(
                    "--resume: continuing %s run %s (%s, started %s), the newest interrupted run with these inputs: %s",
                    step, candidate.info.run_id, status, started, tracker.url_of(candidate),
                )  # fmt: skip
                return candidate.info.run_id
    raise TrackingError(
        f"--resume: no interrupted {step} run with a checkpoint for this config and data; "
        f"run without --resume to start afresh"
    )


def checkpoint_dir(run_id: str) -> Path:
    """Where a run's resumable checkpoint lives (local: checkpoints are large and written every epoch)."""
    return trainwise_home() / "checkpoints" / run_id


def _record_reuse(tracker: Tracker, step: str, run_id: str, url: str) -> None:
    """`mlflow run` already created a run for us: end it as a pointer to the reused one."""
    with tracker.run(step, tags={TAG_REUSED: run_id}) as pointer:
        pointer.set_description(f"Inputs unchanged: this step's results are in the cached run [{run_id}]({url}).")
