"""Why a step has no run to reuse: which of its identity parts changed since its newest finished run.

Every run carries one tag per identity part (`trainwise.key.<part>`, see trainwise.identity) and
its whole config as params, so the answer names the settings themselves ("sample.size 300 -> 200"),
the upstream step that changed, the data, the model file or trainwise's own code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainwise.config import ProjectConfig
from trainwise.identity import TAG_KEY_PART, part_tags
from trainwise.steps import get_step
from trainwise.tracking import TAG_STEP, Run, Tracker

MAX_SETTINGS_NAMED = 6
TAG_REUSED = "trainwise.reused_run"  # runner.TAG_REUSED: a pointer run holds no results of its own

_PART_WORDS = {
    "source": "the data changed (the source's content fingerprint)",
    "code": "trainwise's own code changed",
    "user_code": "the model file, model.init weights or pretrained model.weights changed",
    "dry_run": "--dry-run differs",
    "gate": "--skip-checks differs",
}


def newest_real_run(tracker: Tracker, step: str, *, status: str | None = "FINISHED") -> Run | None:
    """The newest run of `step` (in `status`; None: any) that holds results, not a pointer to a reused run."""
    for run in tracker.search({TAG_STEP: step}, status=status, max_results=20):
        if TAG_REUSED not in run.data.tags:
            return run
    return None


def stale_reason(step: str, cfg: ProjectConfig, tracker: Tracker, parts: Mapping[str, Mapping[str, Any]]) -> str:
    """'never run', or what differs from the step's newest finished run ('sample.size 300 -> 200; ...').

    `parts` are every step's identity parts for the current config (runner.cache_parts).
    """
    previous = newest_real_run(tracker, step)
    if previous is None:
        return "never run"
    tags = previous.data.tags
    now = part_tags(parts[step])
    if not any(k.startswith(TAG_KEY_PART) for k in tags):
        return "its last run predates per-part keys; it reruns once"
    reasons = []
    for tag, value in now.items():
        if tags.get(tag) == value:
            continue
        name = tag.removeprefix(TAG_KEY_PART)
        if name == "config":
            reasons.append(changed_settings(step, cfg, previous.data.params))
        elif name.startswith("upstream."):
            reasons.append(f"upstream {name.removeprefix('upstream.')} changed")
        else:
            reasons.append(_PART_WORDS.get(name, f"{name} changed"))
    if not reasons:  # same inputs: the registry state or the options it is keyed on moved
        reasons.append("the registry versions or command options it depends on changed")
    return "; ".join(reasons)


def changed_settings(step: str, cfg: ProjectConfig, previous_params: Mapping[str, str]) -> str:
    """The settings of the step's sections (less those it ignores) whose values differ from `previous_params`."""
    spec = get_step(step)
    now = cfg.flat_params()

    def relevant(key: str) -> bool:
        section = key.split(".", 1)[0]
        return section in spec.sections and not any(key == i or key.startswith(f"{i}.") for i in spec.ignores)

    keys = sorted({k for k in (*now, *previous_params) if relevant(k) and now.get(k) != previous_params.get(k)})
    if not keys:
        return "its settings changed"  # e.g. a value longer than MLflow keeps in a param
    named = [f"{k} {_shown(previous_params.get(k))} -> {_shown(now.get(k))}" for k in keys[:MAX_SETTINGS_NAMED]]
    more = f" and {len(keys) - MAX_SETTINGS_NAMED} more" if len(keys) > MAX_SETTINGS_NAMED else ""
    return ", ".join(named) + more


def _shown(value: str | None) -> str:
    if value is None:
        return "(unset)"
    return value if len(value) <= 40 else value[:37] + "..."
