"""Step 1, understand: what is the problem, what does the data look like, what will happen next.

Logs a problem card (markdown, also shown as the run's description in the MLflow UI), the peek at
the data as JSON, and the headline counts as metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from trainwise.config import ProjectConfig
from trainwise.data.sources import Peek, peek
from trainwise.steps import STEPS
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)

_MAX_CLASS_ROWS = 30
IMBALANCE_RATIO = 3.0  # largest / smallest class from which the card advises on metric and training
BALANCED_METRICS = ("balanced_accuracy", "f1_macro")

_TASK_WORDS = {
    "image_classification": "image classification",
    "tabular_classification": "tabular classification",
    "tabular_regression": "tabular regression",
}


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    data = peek(cfg)
    card = problem_card(cfg, data)
    run.log_text(card, "problem_card.md")
    run.set_description(card)
    run.log_dict(data.to_dict(), "peek.json")
    metrics = {"n_train": data.n_train or 0, "n_test": data.n_test or 0}
    if data.class_counts is not None:
        metrics["n_classes"] = len(data.class_counts)
    run.log_metrics(metrics)
    for note in data.notes:
        log.info("%s: %s", cfg.name, note)
    return {"peek": data.to_dict()}


def problem_card(cfg: ProjectConfig, data: Peek) -> str:
    """The problem card: task, target, classes, metric, submission format and the plan."""
    task = cfg.task
    n_classes = len(data.class_counts or {})
    what = _TASK_WORDS[task.type] + (f", {n_classes} classes" if task.is_classification else "")
    # The gist first: the MLflow UI collapses a long description after its first lines.
    gist = f"**{what}**; predict `{task.target}`; metric {task.metric} ({task.direction}); {_count(data.n_train)} training items"
    lines = [f"# {cfg.name}: problem card", "", gist, ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    rows = [
        ("task", what),
        ("target", f"`{task.target}`"),
        ("metric", f"{task.metric} ({task.direction})"),
        ("data", f"{data.kind}: {data.location}"),
        ("training items", _count(data.n_train)),
        ("test items", _count(data.n_test) + ("" if data.n_test is None or data.test_labelled else " (unlabelled)")),
    ]
    if task.is_image:
        height, width = cfg.image.size
        rows.append(("network input", f"{height}x{width} pixels, {cfg.image.channels} channel{'s' if cfg.image.channels > 1 else ''}"))
    rows.append(("model", f"`{cfg.model.name}`"))
    rows.append(("submission", _submission_format(cfg, data)))
    lines += ["| property | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]

    if data.class_counts:
        lines += _class_table(data.class_counts, cfg)
    if data.target_summary:
        s = data.target_summary
        lines += ["## Target", "", f"min {s['min']:.4g}, mean {s['mean']:.4g}, max {s['max']:.4g}, std {s['std']:.4g}", ""]
    if data.columns:
        lines += ["## Columns", "", "| column | dtype | missing |", "|---|---|---|"]
        lines += [f"| {c} | {t} | {(data.missing or {}).get(c, 0)} |" for c, t in data.columns.items()]
        lines.append("")
    if data.examples:
        lines += ["## Examples", ""]
        if data.kind == "tabular":
            lines += ["```", data.examples[0].strip(), "```"]
        else:
            lines += [f"- `{example}`" for example in data.examples]
        lines.append("")
    if data.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in data.notes), ""]
    lines += _plan(cfg)
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "none" if n is None else f"{n:,}"


def _submission_format(cfg: ProjectConfig, data: Peek) -> str:
    sub = cfg.submission
    if sub.format == "probabilities" and data.class_counts:
        shown = list(data.class_counts)[:3]
        columns = ", ".join([sub.id_column, *shown]) + (", ..." if len(data.class_counts) > 3 else "")
        what = "one probability column per class"
    else:
        columns = f"{sub.id_column}, {sub.target_column}"
        what = {"label": "the class name", "index": "the class index", "probabilities": "the prediction"}[sub.format]
        if not cfg.task.is_classification:
            what = "the predicted value"
    return f"CSV `{columns}`: one row per test item, {what}"


def _class_table(counts: dict[str, int], cfg: ProjectConfig) -> list[str]:
    total = sum(counts.values()) or 1
    largest, smallest = max(counts.values()), min(counts.values())
    ratio = f"{largest / smallest:.2f}" if smallest else "inf (an empty class)"
    lines = ["## Classes", "", f"{len(counts)} classes; imbalance ratio (largest / smallest) {ratio}.", ""]
    if not smallest or largest / smallest >= IMBALANCE_RATIO:
        lines += [*_imbalance_advice(cfg, largest / total), ""]
    lines += ["| class | items | share |", "|---|---:|---:|"]
    shown = list(counts.items())[:_MAX_CLASS_ROWS]
    lines += [f"| {name} | {n:,} | {n / total:.1%} |" for name, n in shown]
    if len(counts) > _MAX_CLASS_ROWS:
        lines.append(f"| ... {len(counts) - _MAX_CLASS_ROWS} more | | |")
    return [*lines, ""]


def _imbalance_advice(cfg: ProjectConfig, majority: float) -> list[str]:
    """What suits unbalanced classes, against what the project has set."""
    metric = cfg.task.metric
    judged = (
        f"`task.metric` is `{metric}`: fine for unbalanced classes."
        if metric in BALANCED_METRICS
        else (f"`task.metric` is `accuracy`, which predicting the largest class alone scores at {majority:.1%}" if metric == "accuracy"
              else f"`task.metric` is `{metric}`, which weights every item alike, so the largest classes dominate it")
        + ": judge by `balanced_accuracy` (the mean recall over classes) or `f1_macro` instead, or watch them beside it."
    )
    train = cfg.train
    balanced = train.class_weight == "balanced" or train.sampler == "balanced"
    option = (
        f"Training is balanced (`train.class_weight: {train.class_weight}`, `train.sampler: {train.sampler}`)."
        if balanced
        else "Consider `train.class_weight: balanced` (each class's loss weighted by its rarity) or `train.sampler: balanced` "
        "(every class drawn equally often); both leave evaluation unweighted, and every report shows balanced accuracy and macro F1."
    )
    return [f"**The classes are unbalanced.** {judged} {option}"]


def _plan(cfg: ProjectConfig) -> list[str]:
    project = cfg.project_ref
    lines = ["## What the next steps do", "", "| step | command | does |", "|---|---|---|"]
    for spec in STEPS:
        lines.append(f"| {spec.number} | `{spec.command} --project {project}` | {spec.title} |")
    return [*lines, "", f"Or all at once: `trainwise run --project {project}`."]
