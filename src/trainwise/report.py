"""The findings report: every step's findings on one self-contained page, and what to try next.

The pipeline run logs it as `report.html` (viewed in the MLflow UI's artifact pane). It is built
only from what the step runs logged (their descriptions, metrics, tags and artifacts), so it says
exactly what the runs say: nothing is recomputed here, and a step that did not run is named as such.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainwise.config import ProjectConfig
from trainwise.datacard import CardSection, render_html
from trainwise.steps import STEPS, artifacts
from trainwise.tracking import Run, Tracker

log = logging.getLogger(__name__)

# The figures worth a look in the report, per step, in the order shown (the rest stay in each run).
FIGURES: dict[str, tuple[str, ...]] = {
    "explore": ("plots/class_distribution.png", "plots/sample_grid.png", "plots/sizes.png", "plots/duplicate_groups.png"),
    "sample": ("checks/sample_label_distribution.png",),
    "prepare": ("augmentation_preview.png",),
    "train": ("evaluation/learning_curves.png", "evaluation/test_confusion_matrix.png", "evaluation/test_per_class.png",
              "evaluation/test_worst_errors.png"),
    "tune": ("study/optimization_history.png", "study/param_importances.png"),
    "promote": ("comparison/confusion_matrices.png", "comparison/per_class.png"),
    "submit": ("predicted_classes.png",),
}  # fmt: skip
# Where a step's figures live: when none of the names above is there (a table project's plots, a
# regression's evaluation), the first of that folder are shown instead.
FIGURE_FOLDERS = {"explore": "plots", "train": "evaluation", "tune": "study"}
MAX_FIGURES = 4
MAX_LISTED = 10  # rows of a listing (quarantined files, trials) shown; the run holds them all
TAG_STUDY, TAG_TRIAL, TAG_TRIAL_STATE = "trainwise.study", "trainwise.trial", "trainwise.trial_state"  # set by tune
TAG_PROMOTION, TAG_PROMOTION_REASON = "trainwise.promotion", "trainwise.promotion_reason"  # set by promote
GAP_SCORE = 0.05  # a train-validation gap of accuracy-like scores above this: overfitting
GAP_RELATIVE = 0.25  # for errors (rmse, log loss): the gap as a share of the validation error


@dataclass(frozen=True)
class Advice:
    """One "what to try next": what was found, and what to do about it."""

    finding: str
    action: str


def build_report(cfg: ProjectConfig, tracker: Tracker, run_ids: Mapping[str, str], *, title: str | None = None) -> str:
    """The report's HTML for the step runs `run_ids` (step -> run id), in the steps' order."""
    runs = {step: tracker.get_run(run_id) for step, run_id in run_ids.items()}
    with tempfile.TemporaryDirectory(prefix="trainwise-report-") as tmp:
        sections = [_summary(cfg, tracker, runs)]
        for spec in STEPS:
            if spec.name in runs:
                sections.append(_step_section(cfg, tracker, spec.name, runs[spec.name], Path(tmp), title=f"{spec.number}. {spec.title}"))
        sections.append(_next_section(advice(cfg, tracker, runs, Path(tmp))))
        return render_html(title or f"{cfg.name}: findings", sections)


def _summary(cfg: ProjectConfig, tracker: Tracker, runs: Mapping[str, Run]) -> CardSection:
    metric = cfg.task.metric or ("accuracy" if cfg.task.is_classification else "rmse")
    rows = []
    for spec in STEPS:
        run = runs.get(spec.name)
        rows.append({"step": f"{spec.number} {spec.name}", "what it does": spec.title, "run": run.info.run_id if run else "not run",
                     "finding": _headline(spec.name, run, metric) if run else ""})  # fmt: skip
    links = "\n".join(f"- [{step} run]({tracker.url_of(run)})" for step, run in runs.items())
    return CardSection("Summary", markdown=f"{cfg.description or ''}\n\nThe runs this report was made from:\n\n{links}",
                       tables={"Steps": pd.DataFrame(rows)})  # fmt: skip


def _headline(step: str, run: Run, metric: str) -> str:
    """One line per step for the summary table, from what the run logged."""
    m, tags = run.data.metrics, run.data.tags
    if step == "ingest":
        return f"{_int(m.get('usable'))} usable, {_int(m.get('quarantined'))} quarantined" if "usable" in m else ""
    if step in ("sample", "prepare", "check"):
        return tags.get(artifacts.TAG_CHECKS, "") + (" (gate passed)" if tags.get("trainwise.passed") == "true" else "")
    if step == "train":
        found = [f"test {metric} {m[f'test_{metric}']:.4g}"] if f"test_{metric}" in m else []
        if f"baseline_test_{metric}" in m:
            found.append(f"baseline {m[f'baseline_test_{metric}']:.4g}")
        return ", ".join(found)
    if step == "tune":
        return f"best value {m['best_value']:.4g} of {_int(m.get('trials_complete'))} complete trials" if "best_value" in m else ""
    if step == "promote":
        return f"{tags.get(TAG_PROMOTION, '?')}: {tags.get(TAG_PROMOTION_REASON, '')}"
    if step == "submit":
        scores = [f"{k.removeprefix('submission_')} {v:.4g}" for k, v in sorted(m.items()) if k.startswith("submission_")]
        return ", ".join(scores) or "written (no answers to score it)"
    return ""


def _short(value: str) -> str:
    """A logged param as people read it: 0.0199630432 -> 0.01996; words and integers unchanged."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def _int(value: float | None) -> str:
    return "?" if value is None else f"{int(value):,}"


def _step_section(cfg: ProjectConfig, tracker: Tracker, step: str, run: Run, folder: Path, *, title: str) -> CardSection:
    description = run.data.tags.get("mlflow.note.content", "")
    figures = {name: png for name, png in _figures(tracker, step, run, folder)}
    state = "" if run.info.status == "FINISHED" else f"**This run ended {run.info.status}.**\n\n"
    link = f"[Open the {step} run in the MLflow UI]({tracker.url_of(run)}) for every metric, figure and artifact."
    tables = {}
    if step == "ingest" and run.data.metrics.get("quarantined"):
        quarantined = pd.read_csv(tracker.download_artifact(run.info.run_id, artifacts.QUARANTINE, folder / run.info.run_id))
        tables[f"Quarantined ({len(quarantined):,} files, first {min(len(quarantined), MAX_LISTED)})"] = quarantined.head(MAX_LISTED)
    if step == "tune":
        trials = _best_trials(tracker, run, maximize=cfg.task.direction == "maximize")
        if not trials.empty:
            tables[f"Best trials (of {len(trials)})"] = trials.head(MAX_LISTED)
    return CardSection(title, markdown=f"{state}{_demote_headings(description)}\n\n{link}", figures=figures, tables=tables)


def _best_trials(tracker: Tracker, tune: Run, *, maximize: bool) -> pd.DataFrame:
    """The study's trials as its child runs logged them (number, state, value, suggested params), best first."""
    study = tune.data.tags.get(TAG_STUDY)
    if not study:
        return pd.DataFrame()
    rows = []
    for trial in tracker.search({TAG_STUDY: study}):
        if TAG_TRIAL not in trial.data.tags:
            continue
        params = {k: _short(v) for k, v in trial.data.params.items() if k != "trial"}
        rows.append({"trial": int(trial.data.tags[TAG_TRIAL]), "state": trial.data.tags.get(TAG_TRIAL_STATE, trial.info.status.lower()),
                     "value": trial.data.metrics.get("best_value", float("nan")), **params})  # fmt: skip
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).drop_duplicates("trial")  # a retried trial: its newest run
    return frame.sort_values(["value", "trial"], ascending=[not maximize, True], na_position="last").reset_index(drop=True)


def _demote_headings(markdown: str) -> str:
    # a run description starts at "#": inside the report it sits under the step's own heading
    return "\n".join("###" + line.lstrip("#") if line.startswith("#") else line for line in markdown.splitlines())


def _figures(tracker: Tracker, step: str, run: Run, folder: Path) -> list[tuple[str, bytes]]:
    wanted = list(FIGURES.get(step, ()))
    present = {path for parent in {_parent(w) for w in wanted} for path in _listing(tracker, run, parent)}
    if step == "check":  # the failed rows' own figures: what the user must look at
        failed = [row["name"] for row in _json(tracker, run, artifacts.CHECKS, folder).get("checks", []) if not row.get("passed", True)]
        present = set(_listing(tracker, run, "checks"))
        wanted = [f"checks/{name}.png" for name in failed]
    chosen = [w for w in wanted if w in present]
    if not chosen and step in FIGURE_FOLDERS:
        chosen = sorted(p for p in _listing(tracker, run, FIGURE_FOLDERS[step]) if p.endswith(".png"))
    return [
        (path.rsplit("/", 1)[-1].removesuffix(".png").replace("_", " "),
         tracker.download_artifact(run.info.run_id, path, folder / run.info.run_id).read_bytes())
        for path in chosen[:MAX_FIGURES]
    ]  # fmt: skip


def _parent(path: str) -> str | None:
    return path.rsplit("/", 1)[0] if "/" in path else None


def _listing(tracker: Tracker, run: Run, parent: str | None) -> list[str]:
    return tracker.list_artifacts(run.info.run_id, parent)


def _json(tracker: Tracker, run: Run, path: str, folder: Path) -> dict[str, Any]:
    if path not in _listing(tracker, run, _parent(path)):
        return {}
    return json.loads(tracker.download_artifact(run.info.run_id, path, folder / run.info.run_id).read_text())


# -- what to try next -----------------------------------------------------------------------------


def advice(cfg: ProjectConfig, tracker: Tracker, runs: Mapping[str, Run], folder: Path) -> list[Advice]:
    """What the findings suggest trying next, most pressing first."""
    found: list[Advice] = []
    for step in ("sample", "prepare", "check"):
        run = runs.get(step)
        if run is not None and not _all_passed(run):
            failed = sorted(k.removeprefix("check.") for k, v in run.data.metrics.items() if k.startswith("check.") and v == 0)
            found.append(Advice(f"{step}: checks failed ({', '.join(failed) or run.data.tags.get(artifacts.TAG_CHECKS, '?')})",
                                f"fix what each failed row's advice says (the {step} run's description) before trusting any score"))  # fmt: skip
    check = runs.get("check")
    if check is not None:
        found += _label_advice(tracker, check, folder)
    train = runs.get("train")
    if train is not None:
        found += _training_advice(cfg, tracker, train, folder)
    promote = runs.get("promote")
    if promote is not None and promote.data.tags.get(TAG_PROMOTION) == "kept":
        reason = promote.data.tags.get(TAG_PROMOTION_REASON, "")
        found.append(Advice(f"the challenger was not promoted: {reason}", "read the promote run's comparison before trying more (tune.trials, tune.space)"))
    return found


def _all_passed(run: Run) -> bool:
    """From the step's "N/M passed" tag; a run without one (it failed before judging) has not passed."""
    done, _, total = run.data.tags.get(artifacts.TAG_CHECKS, "").split(" ")[0].partition("/")
    return bool(done) and done == total


def _label_advice(tracker: Tracker, check: Run, folder: Path) -> list[Advice]:
    if artifacts.LABEL_ISSUES not in _listing(tracker, check, None):
        return []
    suspects = pd.read_csv(tracker.download_artifact(check.info.run_id, artifacts.LABEL_ISSUES, folder / check.info.run_id))
    if suspects.empty:
        return []
    first = ", ".join(f"{row.id} ({row.given} -> {row.suggested})" for row in suspects.head(5).itertuples())
    return [Advice(f"{len(suspects)} suspected label errors in the sample, e.g. {first}",
                   f"review the listed files ({artifacts.LABEL_ISSUES} of the check run) and fix their labels at the source")]  # fmt: skip


def _training_advice(cfg: ProjectConfig, tracker: Tracker, train: Run, folder: Path) -> list[Advice]:
    metric = cfg.task.metric or ("accuracy" if cfg.task.is_classification else "rmse")
    maximize = cfg.task.direction == "maximize"
    m, tags = train.data.metrics, train.data.tags
    found = []
    rows = {row["name"]: row for row in _json(tracker, train, artifacts.SAMPLE_VS_FULL, folder).get("checks", [])}
    gap = rows.get("generalization_gap_shrinks", {}).get("value")
    val = m.get(f"best_val_{metric}")
    if gap is not None and val is not None and not math.isnan(gap):
        relative = gap / max(abs(val), 1e-12)
        if (maximize and gap > GAP_SCORE) or (not maximize and relative > GAP_RELATIVE):
            found.append(Advice(f"a large train-validation gap: {metric} {gap:.3g} better on training than on validation",
                                "regularise (train.weight_decay, model.params.dropout, train.label_smoothing) or augment more (augment.*)"))  # fmt: skip
    versus = tags.get("trainwise.baseline", "")
    if "falls short of the baseline" in versus or "ties with the baseline" in versus:
        found.append(Advice(f"the network does no better than the classical baseline: {versus}",
                            "underfitting or the wrong model for this data: a bigger model (model.params.width, depth), more epochs, "
                            "or features the linear model already uses well"))  # fmt: skip
    epochs, best = m.get("epochs_run"), m.get("best_epoch")
    if epochs and best and best >= epochs and tags.get("trainwise.stop_reason") == "completed":
        found.append(Advice(f"the best epoch was the last of {int(epochs)}: validation {metric} (or its loss) was still improving",
                            f"train longer: train.epochs above {int(epochs)}"))  # fmt: skip
    curve = rows.get("learning_curve_extrapolation", {})
    if curve and not curve.get("passed", True):
        found.append(Advice("the full run's error is far from what smaller training sets predict",
                            curve.get("advice", "compare the full and sample runs")))  # fmt: skip
    elif "left out to stay within it" in curve.get("meaning", ""):
        found.append(Advice("the learning curve was not measured (over its compute budget)",
                            "to see whether more data would help, raise checks.learning_curve_budget as the row says"))  # fmt: skip
    return found


def _next_section(found: list[Advice]) -> CardSection:
    if not found:
        return CardSection("What to try next", "No finding calls for a change. To go further: more tuning trials (tune.trials), "
                           "or a wider search space (tune.space).")  # fmt: skip
    table = pd.DataFrame([{"finding": a.finding, "try": a.action} for a in found])
    return CardSection("What to try next", "Derived from the findings above, most pressing first.", tables={"Next": table})
