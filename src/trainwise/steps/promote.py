"""Step 6b, promote: the `challenger` against the `champion` on the fixed holdout, side by side, in one run.

The holdout is prepare's `test` split of scope full: the same items whichever models are compared.
Each model predicts them from raw inputs (image files, table rows) through its own preprocessing,
as the registered model does when served, so a model trained on an older prepare run (other
normalisation statistics, another image size) is scored as it will be used. `promotion.decide`
makes the call; this step moves the aliases (never MLflow's deprecated stages):
`previous-champion` <- the old champion, `champion` <- the challenger.

`--rollback` swaps `champion` and `previous-champion`, so rolling back twice returns to where it
started. Only one level of undo is kept: a promotion overwrites `previous-champion`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from trainwise import plots, serving
from trainwise.config import ProjectConfig
from trainwise.data.records import list_images
from trainwise.evaluation import Predictions, confusion, per_class_table
from trainwise.metrics import CLASSIFICATION, MetricAccumulator
from trainwise.paths import trainwise_home
from trainwise.promotion import FIRST_CHAMPION, PROMOTED, ROLLBACK, Candidate, Decision, PromotionError, decide
from trainwise.provenance import short_hash
from trainwise.steps import artifacts
from trainwise.steps.inputs import load_prepared_data, table_rows
from trainwise.steps.runner import StepContext
from trainwise.tracking import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, ModelVersionInfo, Registry, StepRun

log = logging.getLogger(__name__)

TAG_PROMOTION = "trainwise.promotion"  # promoted, kept, first-champion or rollback
TAG_REASON = "trainwise.promotion_reason"
TAG_CHECKS_PASSED = "trainwise.checks_passed"  # on model versions, set by tune when it registers one
TAG_CHECKS = "trainwise.checks"
TAG_DIGEST = "trainwise.data_digest"
TAG_PREPARE_RUN = "trainwise.prepare_run"  # on a registered version: the prepare run whose splits it was trained on
TAG_CONTAMINATED = "trainwise.holdout_contaminated"
NOT_COMPARABLE = "not_comparable"
TAG_PROMOTED_BY = "trainwise.promoted_by"  # on a version that became champion: the promote run's id
TABLE = "comparison.csv"
FIGURES = "comparison"


@dataclass
class Holdout:
    """The fixed holdout: raw inputs as the registered model takes them, and the answers."""

    task: str
    classes: list[str]
    inputs: pd.DataFrame  # indexed by item id
    targets: torch.Tensor  # class indices into `classes`, or values in the target's units
    digest: str  # the data digest of the ingest run it comes from


@dataclass
class Scored:
    role: str  # CHALLENGER or CHAMPION
    version: ModelVersionInfo
    predictions: Predictions
    metrics: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.role} v{self.version.version}"


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    registry = Registry(ctx.tracker.tracking_uri)
    name = cfg.registry.model_name or cfg.name
    if ctx.options.get("rollback"):
        return _rollback(cfg, run, registry, name)

    challenger = registry.by_alias(name, CHALLENGER)
    if challenger is None:
        raise PromotionError(
            f"registered model {name!r} has no {CHALLENGER!r} version to promote ({registry.url(name)}). "
            f"Run `trainwise tune --project {cfg.project_ref}` (it registers its best model as the challenger), "
            f"or register a model version yourself and give it the alias {CHALLENGER!r}"
        )
    champion = registry.by_alias(name, CHAMPION)
    holdout = _holdout(cfg, ctx)
    holdout, contamination = _clean_holdout(ctx, holdout, [v for v in (challenger, champion) if v is not None])
    if holdout is None:  # every holdout item was in a model's training data: no fair comparison exists
        return _not_comparable(cfg, run, name=name, challenger=challenger, champion=champion, overlap=contamination)
    scored = [_score(ctx, holdout, CHALLENGER, challenger)]
    if champion is not None:
        same = champion.version == challenger.version
        scored.append(Scored(CHAMPION, champion, scored[0].predictions, scored[0].metrics) if same else _score(ctx, holdout, CHAMPION, champion))

    metric = cfg.task.metric or "accuracy"
    decision = decide(
        _candidate(scored[0], metric),
        _candidate(scored[1], metric) if champion is not None else None,
        metric=metric,
        direction=cfg.task.direction,
        margin=cfg.registry.promotion_margin,
    )
    if contamination:
        decision = replace(decision, reason=f"{decision.reason} (compared on the {len(holdout.targets)} holdout items no model was trained or selected on: {_overlap_text(contamination)})")
        log.warning("%s: %s", name, _overlap_text(contamination))
    _log_comparison(run, holdout, scored)

    if decision.promote:
        if champion is not None:
            registry.set_alias(name, PREVIOUS_CHAMPION, champion.version)
        registry.set_alias(name, CHAMPION, challenger.version)
        registry.set_tags(name, challenger.version, {TAG_PROMOTED_BY: run.run_id})
    now = challenger.version if decision.promote else (champion.version if champion else None)
    previous = champion.version if decision.promote and champion else _version_of(registry, name, PREVIOUS_CHAMPION)
    run.set_tags({
        TAG_PROMOTION: decision.outcome,
        TAG_REASON: decision.reason[:5000],
        TAG_CONTAMINATED: str(bool(contamination)).lower(),
        "trainwise.model_name": name,
        "trainwise.challenger_version": challenger.version,
        "trainwise.champion_version": champion.version if champion else "",
        "trainwise.champion": now or "",
    })  # fmt: skip
    run.set_description(_markdown(cfg, registry, name, decision, scored, holdout=holdout, champion=now, previous=previous))
    log.info("%s: %s (%s)", name, decision.outcome, decision.reason)
    return {
        "decision": decision.outcome,
        "reason": decision.reason,
        "champion": now,
        "previous_champion": previous,
        "challenger": challenger.version,
        **{f"{s.role}_{metric}": s.metrics[metric] for s in scored},
    }


def _clean_holdout(ctx: StepContext, holdout: Holdout, versions: list[ModelVersionInfo]) -> tuple[Holdout | None, dict[str, int]]:
    """The holdout less the items a version was trained or selected on (when its splits were other ones).

    A version records the prepare run whose splits it was trained on (TAG_PREPARE_RUN). After, say,
    split.seed changed, an older champion's training items sit in today's holdout: its figures there
    are inflated. Both models are then scored on the items neither saw; none left: None.
    """
    seen: set[str] = set()
    overlap: dict[str, int] = {}
    for version in versions:
        prepare_run = version.tags.get(TAG_PREPARE_RUN)
        if not prepare_run or prepare_run == ctx.upstream["prepare"]:
            continue  # today's splits (or unknown: the report says the data it came from)
        splits = pd.read_parquet(ctx.tracker.download_artifact(prepare_run, artifacts.SPLITS, trainwise_home() / "artifacts" / prepare_run))
        used = set(splits.loc[(splits["scope"] == "full") & splits["split"].isin(["train", "val"]), "id"].astype(str))
        count = int(holdout.inputs.index.isin(used).sum())
        if count:
            overlap[f"v{version.version}"] = count
            seen |= used
    if not overlap:
        return holdout, {}
    keep = ~holdout.inputs.index.isin(seen)
    if not keep.any():
        return None, overlap
    return replace(holdout, inputs=holdout.inputs[keep], targets=holdout.targets[torch.from_numpy(keep)]), overlap


def _overlap_text(overlap: dict[str, int]) -> str:
    return "; ".join(f"{count} holdout items were in the training or validation data of {who}" for who, count in overlap.items())


def _not_comparable(
    cfg: ProjectConfig, run: StepRun, *, name: str, challenger: ModelVersionInfo, champion: ModelVersionInfo | None, overlap: dict[str, int]
) -> dict[str, Any]:
    reason = f"no fair comparison: {_overlap_text(overlap)}, which leaves no clean holdout item; the aliases stay. Retrain on today's splits (`trainwise train --project {cfg.project_ref}`)"
    log.warning("%s: %s", name, reason)
    run.set_tags({TAG_PROMOTION: NOT_COMPARABLE, TAG_REASON: reason[:5000], TAG_CONTAMINATED: "true", "trainwise.model_name": name})
    run.set_description(f"# {cfg.name}: promote\n\n**Not compared.** {reason}")
    return {"decision": NOT_COMPARABLE, "reason": reason, "champion": champion.version if champion else None, "challenger": challenger.version}


def _candidate(scored: Scored, metric: str) -> Candidate:
    return Candidate(scored.version.version, scored.metrics[metric], scored.version.tags.get(TAG_CHECKS_PASSED) == "true")


def _version_of(registry: Registry, name: str, alias: str) -> str | None:
    found = registry.by_alias(name, alias)
    return found.version if found else None


# -- rollback ------------------------------------------------------------------------------------


def _rollback(cfg: ProjectConfig, run: StepRun, registry: Registry, name: str) -> dict[str, Any]:
    """`champion` <-> `previous-champion`: the last promotion undone, and undoable in turn."""
    champion = _version_of(registry, name, CHAMPION)
    previous = _version_of(registry, name, PREVIOUS_CHAMPION)
    if previous is None:
        raise PromotionError(
            f"registered model {name!r} has no {PREVIOUS_CHAMPION!r} version to roll back to ({registry.url(name)}); "
            f"it is set when `trainwise promote --project {cfg.project_ref}` replaces a champion"
        )
    registry.set_alias(name, CHAMPION, previous)
    if champion is None:  # the champion alias was removed by hand: nothing to swap back to
        registry.delete_alias(name, PREVIOUS_CHAMPION)
    else:
        registry.set_alias(name, PREVIOUS_CHAMPION, champion)
    was = f"v{champion}" if champion else "no champion"
    reason = f"rolled back: champion v{previous} (was {was})" + (f"; previous-champion v{champion}" if champion else "")
    run.set_tags({
        TAG_PROMOTION: ROLLBACK,
        TAG_REASON: reason,
        "trainwise.model_name": name,
        "trainwise.champion_version": champion or "",
        "trainwise.champion": previous,
    })  # fmt: skip
    lines = [f"# {cfg.name}: rollback", "", f"**{reason}.**", ""]
    lines += [f"- champion: [v{previous}]({registry.url(name, previous)})"]
    if champion:
        lines += [f"- previous-champion: [v{champion}]({registry.url(name, champion)})"]
    lines += ["", f"Registered model: [{name}]({registry.url(name)}). Roll back again to undo: `trainwise promote --rollback --project {cfg.project_ref}`."]
    run.set_description("\n".join(lines))
    log.info("%s: %s", name, reason)
    return {"decision": ROLLBACK, "reason": reason, "champion": previous, "previous_champion": champion}


# -- the holdout and the scores ------------------------------------------------------------------


def _holdout(cfg: ProjectConfig, ctx: StepContext) -> Holdout:
    data = load_prepared_data(cfg, ctx, "full")
    split = data.splits.get("test")
    if split is None:
        raise PromotionError(
            f"prepare run {ctx.upstream['prepare']} has no labelled test split to compare models on; "
            "the holdout is the `test` split of scope full: set split.test above 0 in project.yaml (or give the source a labelled test set)"
        )
    ids = data.ids["test"]
    targets = split.y
    if data.task != CLASSIFICATION:
        mean, std = data.target_scale
        targets = split.y.double() * std + mean
    ingest = ctx.tracker.get_run(ctx.upstream["ingest"])
    return Holdout(data.task, data.classes, _raw_inputs(cfg, ctx, ids), targets, ingest.data.tags.get(TAG_DIGEST, ""))


def _raw_inputs(cfg: ProjectConfig, ctx: StepContext, ids: list[str]) -> pd.DataFrame:
    """The holdout items as the served model takes them: image paths, or the raw table rows."""
    if cfg.task.is_image:
        manifest = pd.read_parquet(ctx.upstream_artifact("ingest", artifacts.MANIFEST)).set_index("id")
        root = list_images(cfg).root
        return pd.DataFrame({serving.IMAGE_COLUMN: [str(root / p) for p in manifest.loc[ids, "path"]]}, index=pd.Index(ids, name="id"))
    return table_rows(cfg, ctx).loc[ids].drop(columns=["id", cfg.task.target], errors="ignore")


def _score(ctx: StepContext, holdout: Holdout, role: str, version: ModelVersionInfo) -> Scored:
    """One registered version's predictions on the holdout, from raw inputs, and its metrics."""
    uri = version.source or version.uri
    # Keyed on the logged model's own URI: a version number can come back after a model is deleted.
    folder = ctx.tracker.download_model(uri, trainwise_home() / "models" / short_hash(uri))
    spec_file, weights = _model_files(folder, version)
    predictor = serving.Predictor.from_files(json.loads(spec_file.read_text()), weights)
    output = predictor.predict(holdout.inputs)
    accumulator = MetricAccumulator(holdout.task, len(holdout.classes), torch.device("cpu"))
    if holdout.task == CLASSIFICATION:
        if sorted(predictor.classes) != sorted(holdout.classes):
            raise PromotionError(
                f"{role} v{version.version} predicts the classes {predictor.classes}, the holdout has {holdout.classes}; "
                "models trained on other classes cannot be compared here"
            )
        probabilities = output[[f"{serving.PROB_PREFIX}{c}" for c in holdout.classes]].to_numpy(dtype=np.float64)
        outputs = torch.from_numpy(probabilities).clamp_min(1e-12).log().float()  # log-probabilities serve as logits
    else:
        # A copy: pandas may hand out a read-only view, which torch.from_numpy warns about.
        outputs = torch.from_numpy(output["prediction"].to_numpy(dtype=np.float64, copy=True))
    accumulator.update(outputs, holdout.targets, torch.zeros(()))
    metrics = {k: v for k, v in accumulator.compute().items() if k != "loss"}
    return Scored(role, version, Predictions(outputs, holdout.targets, metrics), metrics)


def _model_files(folder: Path, version: ModelVersionInfo) -> tuple[Path, Path]:
    """The spec and weights a trainwise model carries (serving.log_model puts them under artifacts/)."""
    specs = sorted(folder.rglob(f"artifacts/{serving.SPEC_ARTIFACT}.json")) or sorted(folder.rglob("artifacts/*.json"))
    weights = sorted(folder.rglob("artifacts/*.safetensors"))
    if not specs or not weights:
        raise PromotionError(
            f"{version.uri} (from {version.source}) is not a trainwise model: it has no spec and .safetensors weights under artifacts/"
        )
    return specs[0], weights[0]


# -- what the run shows --------------------------------------------------------------------------


def _log_comparison(run: StepRun, holdout: Holdout, scored: list[Scored]) -> None:
    """Both models' metrics, per-class table and figures, side by side."""
    run.log_metrics({f"{s.role}_{k}": v for s in scored for k, v in s.metrics.items()} | {"holdout_items": float(len(holdout.targets))})
    run.log_frame(_comparison_table(holdout, scored), TABLE)
    if holdout.task == CLASSIFICATION:
        matrices = [
            plots.confusion_matrix(confusion(s.predictions, len(holdout.classes)), holdout.classes, normalize=False, title=f"Confusion matrix: {s.label} (holdout)")
            for s in scored
        ]  # fmt: skip
        _log_png(run, _side_by_side(matrices), "confusion_matrices.png")
        bars = [_titled(plots.per_class_metrics(per_class_table(s.predictions, holdout.classes), holdout.classes), s) for s in scored]
        for figure in bars:
            figure.axes[0].set_xlim(0, 1.15)  # one scale for both panels (scores lie in 0..1; the rest holds the numbers)
        _log_png(run, _side_by_side(bars), "per_class.png")
    else:
        figures = [_titled(plots.predicted_vs_true(s.predictions.targets.numpy(), s.predictions.outputs.numpy()), s) for s in scored]
        _log_png(run, _side_by_side(figures), "predicted_vs_true.png")


def _titled(figure: Figure, scored: Scored) -> Figure:
    """The figure's title led by which model it shows (side by side, the panels must say whose they are)."""
    figure.suptitle(f"{scored.label}: {figure.get_suptitle()}", fontsize=12)
    return figure


def _comparison_table(holdout: Holdout, scored: list[Scored]) -> pd.DataFrame:
    """One row per metric (overall, then per class), a column per model, and the challenger's change."""
    rows: list[dict[str, Any]] = [{"metric": k, "class": "", **{s.role: s.metrics[k] for s in scored}} for k in scored[0].metrics]
    if holdout.task == CLASSIFICATION:
        tables = {s.role: per_class_table(s.predictions, holdout.classes).set_index("class") for s in scored}
        for column in ("precision", "recall", "f1", "support"):
            rows += [{"metric": column, "class": c, **{role: t.at[c, column] for role, t in tables.items()}} for c in holdout.classes]
    frame = pd.DataFrame(rows)
    if CHAMPION not in frame:
        frame[CHAMPION] = np.nan
    frame["change"] = frame[CHALLENGER] - frame[CHAMPION]
    return frame[["metric", "class", CHALLENGER, CHAMPION, "change"]]


def _side_by_side(figures: Sequence[Figure], gap: int = 24) -> bytes:
    """The figures' PNGs pasted left to right on one white canvas (the existing figures, not new plots)."""
    images = [Image.open(BytesIO(plots.save_png(f))).convert("RGB") for f in figures]
    canvas = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)), "white")
    left = 0
    for image in images:
        canvas.paste(image, (left, 0))
        left += image.width + gap
    out = BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _log_png(run: StepRun, png: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="trainwise-promote-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(png)
        run.log_artifact(path, FIGURES)


def _markdown(
    cfg: ProjectConfig,
    registry: Registry,
    name: str,
    decision: Decision,
    scored: list[Scored],
    *,
    holdout: Holdout,
    champion: str | None,
    previous: str | None,
) -> str:
    metric = cfg.task.metric or "accuracy"
    verdict = {PROMOTED: "promoted", FIRST_CHAMPION: "first champion"}.get(decision.outcome, "kept")
    lines = [f"# {cfg.name}: challenger vs champion ({verdict})", "", f"**{decision.reason}.**", ""]
    lines += [f"Holdout: the {len(holdout.targets):,} items of prepare's `test` split (data digest `{holdout.digest}`), predicted from raw inputs.", ""]
    lines += [f"| model | version | {metric} ({cfg.task.direction}) | checks | trained on data |", "|---|---|---:|---|---|"]
    for s in scored:
        tags = s.version.tags
        checks = tags.get(TAG_CHECKS) or ("passed" if tags.get(TAG_CHECKS_PASSED) == "true" else "not passed")
        digest = tags.get(TAG_DIGEST)
        same = "unknown" if digest is None else "this holdout's" if digest == holdout.digest else f"`{digest}` (**other data**)"
        link = f"[v{s.version.version}]({registry.url(name, s.version.version)})"
        lines.append(f"| {s.role} | {link} | {s.metrics[metric]:.4f} | {checks} | {same} |")
    if decision.gain is not None:
        lines += ["", f"Gain in the metric's direction: {decision.gain:+.4f}; promotion margin {cfg.registry.promotion_margin:g}."]
    if holdout.task == CLASSIFICATION and len(scored) == 2:
        lines += ["", *_per_class_lines(holdout, scored)]
    lines += ["", f"Registered model [{name}]({registry.url(name)}): champion " + (f"[v{champion}]({registry.url(name, champion)})" if champion else "none")]
    if previous:
        lines[-1] += f", previous-champion [v{previous}]({registry.url(name, previous)})"
    if decision.promote and previous:
        lines += ["", f"Undo: `trainwise promote --rollback --project {cfg.project_ref}`."]
    lines += ["", f"Figures under `{FIGURES}/`, every number in `{TABLE}`."]
    return "\n".join(lines)


def _per_class_lines(holdout: Holdout, scored: list[Scored], limit: int = 20) -> list[str]:
    """Per-class F1 of both models, the classes that changed most first."""
    f1 = {s.role: per_class_table(s.predictions, holdout.classes)["f1"].to_numpy() for s in scored}
    change = f1[CHALLENGER] - f1[CHAMPION]
    order = np.argsort(-np.abs(change), kind="stable")[:limit]
    shown = "" if len(order) == len(change) else f" (the {limit} that changed most of {len(change)})"
    lines = [f"Per-class F1{shown}:", "", "| class | champion | challenger | change |", "|---|---:|---:|---:|"]
    lines += [f"| {holdout.classes[i]} | {f1[CHAMPION][i]:.3f} | {f1[CHALLENGER][i]:.3f} | {change[i]:+.3f} |" for i in order]
    return lines
