"""Step 5, train: the full data, gated on the checks, tracked per epoch, evaluated once on the test split.

Also trains the sample and a few fractions of the full training set with the same settings, so the
sample-vs-full report can say whether the full run behaved the way the sample predicted. The model
is logged as a pyfunc that predicts from raw inputs (see serving.py).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from trainwise import serving
from trainwise.baseline import against_network, fit_baseline, logged_metrics
from trainwise.callbacks import CheckpointCallback, TrackingCallback
from trainwise.checkpoints import load_checkpoint
from trainwise.checks import summary
from trainwise.checks.sample_vs_full import RunSummary, error_of, sample_vs_full
from trainwise.config import ProjectConfig
from trainwise.data.loading import PreparedData
from trainwise.data.sampling import stratified_sample
from trainwise.datacard import CardSection, render_html
from trainwise.engine import FitResult, TensorData, Trainer
from trainwise.errors import Terminated
from trainwise.evaluation import learning_curves, per_class_table, predict_split, report_figures
from trainwise.fitting import model_spec, pretrained_notes
from trainwise.metrics import CLASSIFICATION
from trainwise.steps import artifacts
from trainwise.steps.inputs import input_example, load_prepared_data, make_trainer, require_passed_checks
from trainwise.steps.runner import StepContext, checkpoint_dir
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)

REPORT = "sample_vs_full.html"
TAG_MODEL = "trainwise.model_uri"
TAG_STOP_REASON = "trainwise.stop_reason"  # why the main fit ended: completed, early stopping, ...
TAG_BASELINE = "trainwise.baseline"  # how the network compares with the classical baseline (baseline.py)


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    require_passed_checks(ctx)
    full = load_prepared_data(cfg, ctx, "full")
    trainer = make_trainer(
        cfg, full, ctx.tracker, callbacks=[TrackingCallback(run), CheckpointCallback(checkpoint_dir(run.run_id))], progress="train"
    )
    resume = load_checkpoint(checkpoint_dir(ctx.resume_from) / "last.pt") if ctx.resume_from else None
    started = time.perf_counter()
    with _keep_checkpoint_on_interrupt(run, trainer), run.system_metrics():
        result = trainer.fit(full.splits["train"], full.splits.get("val"), resume=resume)
    seconds = time.perf_counter() - started
    trainer.model.load_state_dict(result.best_state)  # evaluate the best epoch, not the last

    metric = cfg.task.metric or "accuracy"
    finals: dict[str, float] = {"best_epoch": float(result.best_epoch), "epochs_run": float(len(result.history)), f"best_val_{metric}": result.best_value}
    sections = []
    for split_name in ("val", "test"):
        split = full.splits.get(split_name)
        if split is None:
            continue
        predictions = predict_split(trainer, full, split)
        # best_val_*: validation again with the best epoch's weights (val_* is the per-epoch history)
        prefix = "best_val" if split_name == "val" else split_name
        finals |= {f"{prefix}_{k}": v for k, v in predictions.metrics.items()}
        for name, figure in report_figures(full, predictions, split=split, split_name=split_name).items():
            run.log_figure(figure, f"evaluation/{name}.png")
        if full.task == CLASSIFICATION:
            run.log_frame(per_class_table(predictions, full.classes), f"evaluation/{split_name}_per_class.csv")
    run.log_figure(learning_curves(result.history, metric), "evaluation/learning_curves.png")
    run.log_metrics(finals)
    log.info("%s: stopped after %d epochs (%s); best val %s %.4f at epoch %d", cfg.name, len(result.history), result.stop_reason, metric, result.best_value, result.best_epoch)

    # The model first: the refits behind the sample-vs-full report take a while, and an interrupted
    # or failed refit must not cost the trained model.
    uri = serving.log_model(run.run_id, tracking_uri=run.tracking_uri, model=trainer.model.cpu(), spec=model_spec(cfg, full), input_example=input_example(cfg, ctx, full))
    run.set_tags({TAG_MODEL: uri, TAG_STOP_REASON: result.stop_reason})
    versus = _baseline(cfg, run, full, finals)
    comparison = _sample_vs_full(cfg, run, ctx, full, result, seconds=seconds)
    run.log_dict({"checks": [r.to_dict() for r in comparison]}, artifacts.SAMPLE_VS_FULL)
    run.log_metrics({f"check.{r.name}": float(r.passed) for r in comparison} | {f"check_value.{r.name}": r.value for r in comparison})
    run.set_tags({"trainwise.sample_vs_full": summary(comparison)})
    for check in comparison:
        if check.figure is not None:
            sections.append(CardSection(check.name, check.meaning, {check.name: check.figure}))
    run.log_text(render_html(f"{cfg.name}: sample vs full ({summary(comparison)})", _rows(comparison) + sections), REPORT)

    run.set_description(_markdown(cfg, finals, comparison, result, uri=uri, versus=versus, pretrained=pretrained_notes(cfg, full)))
    return {"model_uri": uri, **finals}


def _baseline(cfg: ProjectConfig, run: StepRun, full: PreparedData, finals: dict[str, float]) -> str:
    """The classical baseline beside the network (seconds, on the same splits); a failure costs a warning, not the run."""
    try:
        baseline = fit_baseline(full, seed=cfg.train.seed)
    except (ValueError, MemoryError) as exc:  # scikit-learn's refusals (e.g. one class in the split), or no memory
        versus = f"No baseline: {type(exc).__name__}: {exc}"
        log.warning("%s", versus)
        return versus
    versus = against_network(baseline, finals, cfg.task.metric or "accuracy", maximize=cfg.task.direction == "maximize")
    run.log_metrics(logged_metrics(baseline))
    run.set_tags({TAG_BASELINE: versus})
    log.info("%s", versus)
    return versus


@contextmanager
def _keep_checkpoint_on_interrupt(run: StepRun, trainer: Trainer) -> Any:
    """On Ctrl-C or SIGTERM, the last epoch's checkpoint goes into the run before it ends KILLED."""
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        if trainer.last_checkpoint:
            log.warning("interrupted: keeping the checkpoint of epoch %d (resume with --resume)", trainer.epoch)
            run.log_artifact(Path(trainer.last_checkpoint), "checkpoints")
        raise


def _sample_vs_full(cfg: ProjectConfig, run: StepRun, ctx: StepContext, full: PreparedData, result: FitResult, *, seconds: float) -> list:
    metric = cfg.task.metric or "accuracy"
    sample = load_prepared_data(cfg, ctx, "sample")
    sample_trainer = make_trainer(cfg, sample, ctx.tracker, callbacks=[], progress="sample-vs-full: the sample")
    sample_init = _init_loss(sample_trainer, sample)
    sample_result = sample_trainer.fit(sample.splits["train"], sample.splits.get("val"))
    full_init = _init_loss(make_trainer(cfg, full, ctx.tracker, callbacks=[]), full)
    curve, note = _learning_curve(cfg, run, ctx, full, result, seconds=seconds)
    return sample_vs_full(
        _summary(sample_result, sample, sample_init, metric),
        _summary(result, full, full_init, metric),
        curve,
        metric=metric,
        maximize=cfg.task.direction == "maximize",
        init_tolerance=cfg.checks.init_loss_tolerance,
        curve_note=note,
    )


def _learning_curve(cfg: ProjectConfig, run: StepRun, ctx: StepContext, full: PreparedData, result: FitResult, *, seconds: float) -> tuple[list[tuple[int, float]], str]:
    """Refits on shares of the training split, within `checks.learning_curve_budget` of the main run's compute.

    Compute is counted in item passes per epoch: each training item once, each validation item a
    third (a forward pass is about a third of forward and backward). A share runs only when the
    refits stay within the budget even if it runs all `train.epochs`, so no refit is cut short (a
    point trained shorter than its settings say would bend the curve) and none is wasted.
    """
    metric = cfg.task.metric or "accuracy"
    train, val = full.splits["train"], full.splits.get("val")
    evaluated = (len(val) if val is not None else 0) / 3
    main_cost = (len(train) + evaluated) * len(result.history)
    limit = cfg.checks.learning_curve_budget * main_cost
    plan, left_out, planned, requested = [], [], 0.0, 0.0
    for fraction in cfg.checks.learning_curve_fractions:
        chosen, _ = stratified_sample(pd.Series(train.y.numpy().astype(str)), size=None, fraction=fraction, seed=cfg.sample.seed)
        index = torch.tensor(chosen.to_numpy(), dtype=torch.long)
        at_most = (len(index) + evaluated) * cfg.train.epochs
        requested += at_most
        if planned + at_most > limit:
            left_out.append(fraction)
        else:
            plan.append((fraction, index))
            planned += at_most
    if len(plan) < 2 <= len(cfg.checks.learning_curve_fractions):  # one point fits no curve: spend nothing on it
        left_out, plan = [f for f, _ in plan] + left_out, []
    curve: list[tuple[int, float]] = []
    spent = 0.0
    started = time.perf_counter()
    for fraction, index in plan:
        refit = make_trainer(cfg, full, ctx.tracker, callbacks=[], progress=f"learning curve {fraction:.0%}")
        fitted = refit.fit(TensorData(train.x[index], train.y[index]), val)
        spent += (len(index) + evaluated) * len(fitted.history)
        curve.append((len(index), error_of(fitted.best_value, metric)))
    share, took = spent / main_cost, time.perf_counter() - started
    run.log_metrics({"learning_curve.points": len(curve), "learning_curve.compute_share": share, "learning_curve.time_share": took / max(seconds, 1e-9)})
    budget = f"checks.learning_curve_budget={cfg.checks.learning_curve_budget:g}"
    ran = f"{len(curve)} refit{'' if len(curve) == 1 else 's'} took {share:.0%} of the main training's compute ({budget})" if curve else f"no refits ({budget})"
    note = ran
    if left_out:
        # what all the shares could need: the user's way to opt in
        need = math.ceil(100 * requested / main_cost) / 100
        note += f"; shares {', '.join(f'{f:g}' for f in left_out)} left out to stay within it (all of them need up to checks.learning_curve_budget={need:g})"
        log.warning("learning curve: %s", note)
    else:
        log.info("learning curve: %s, %.0f s", note, took)
    return curve, note


def _init_loss(trainer: Trainer, data: PreparedData) -> float:
    return trainer.evaluate(data.splits["train"])["loss"]


def _summary(result: FitResult, data: PreparedData, init_loss: float, metric: str) -> RunSummary:
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
    return RunSummary(len(data.splits["train"]), init_loss, best.get(f"train_{metric}", float("nan")), best.get(f"val_{metric}", float("nan")))


def _rows(results: list) -> list[CardSection]:
    table = pd.DataFrame([{k: v for k, v in r.to_dict().items() if k != "extra"} for r in results])
    return [CardSection("Checks", "Each row: what was measured, against what, and what to do when it fails.", tables={"Sample vs full": table})]


def _markdown(
    cfg: ProjectConfig, finals: dict[str, float], comparison: list, result: FitResult, *, uri: str, versus: str, pretrained: list[str]
) -> str:
    metric = cfg.task.metric
    lines = [f"# {cfg.name}: training on the full data", ""]
    lines += [f"Best validation {metric} {result.best_value:.4f} at epoch {result.best_epoch} of {len(result.history)} ({result.stop_reason})."]
    if pretrained:  # what fitting the pretrained weights to these inputs changed (also in the model's spec)
        lines += ["", "Pretrained start:", *(f"- {note}." for note in pretrained)]
    if f"test_{metric}" in finals:
        lines += ["", f"**Test {metric}: {finals[f'test_{metric}']:.4f}** (evaluated once, with the best epoch's weights)."]
    lines += ["", versus]
    lines += ["", f"Model: `{uri}` (predicts from raw inputs: `mlflow.pyfunc.load_model(uri).predict(df)`).", ""]
    lines += ["| sample vs full | passed | value | threshold |", "|---|---|---:|---:|"]
    lines += [f"| {r.name} | {'yes' if r.passed else '**no**'} | {r.value:.4g} | {r.threshold:.4g} |" for r in comparison]
    return "\n".join(lines)
