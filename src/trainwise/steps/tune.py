"""Step 6, tune: an Optuna study, one child run per trial, the best configuration registered as `challenger`.

The study lives in its own Optuna database (never MLflow's): SQLite under .trainwise/ by default,
PostgreSQL or a journal file for several workers. Its name hashes its definition (the objective:
metric, fixed config, space, data; `study_definition`), stored in its user attributes, and it is
opened with load_if_exists, so an interrupted study resumes and several
`trainwise tune` processes pointed at one storage share it. The trial budget is the study's, not a
worker's: every worker stops once the study holds `tune.trials` finished trials.

This is the only module that imports optuna (DESIGN.md).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # Optuna's matplotlib plots draw through pyplot; each figure is closed after logging
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file, save_file
from sqlalchemy.exc import SQLAlchemyError

from trainwise import serving
from trainwise.baseline import against_network, fit_baseline, logged_metrics
from trainwise.callbacks import TrackingCallback
from trainwise.config import ProjectConfig, flatten, with_overrides
from trainwise.config.tune import CategoricalParam, FloatParam, IntParam
from trainwise.data.loading import PreparedData
from trainwise.engine import Callback, NonFiniteLossError, Trainer
from trainwise.errors import ConfigError, Terminated
from trainwise.evaluation import predict_split
from trainwise.fitting import model_spec
from trainwise.identity import user_content
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash
from trainwise.steps.inputs import input_example, load_prepared_data, make_trainer, require_passed_checks
from trainwise.steps.runner import StepContext
from trainwise.tracking import CHALLENGER, TAG_CACHE_KEY, Registry, StepRun, Tracker

log = logging.getLogger(__name__)

STORAGE_ENV = "TRAINWISE_OPTUNA_STORAGE"
TAG_TRIAL = "trainwise.trial"
TAG_TRIAL_STATE = "trainwise.trial_state"
TAG_STUDY = "trainwise.study"
TAG_BEST_TRIAL = "trainwise.best_trial"  # on a registered version: the study's trial it is the result of
TAG_FINALISED = "trainwise.finalised"  # on a tune run: "true" when this worker registered the study's result
DEFINITION_ATTR = "trainwise.definition"  # study user attribute: what the objective is (study_definition)
BASELINE_ATTR = "trainwise.baseline"  # trial user attribute of the project's own configuration: the keys it sets
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's child run, for the run's status after a worker dies

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler, "gp": optuna.samplers.GPSampler,
}  # fmt: skip
PRUNERS = {
    "median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner,
}  # fmt: skip


class _NoTracebackWhenStopped(logging.Filter):
    """Optuna logs a trial ended by Ctrl-C or SIGTERM with the whole traceback; the user asked for the stop,
    so its one line ("Trial 7 failed ... KeyboardInterrupt()") is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, Terminated)):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_stopped_trials() -> None:
    for handler in logging.getLogger("optuna").handlers:  # Optuna's own handler: its records do not propagate
        if not any(isinstance(f, _NoTracebackWhenStopped) for f in handler.filters):
            handler.addFilter(_NoTracebackWhenStopped())


def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    require_passed_checks(ctx)
    _quiet_stopped_trials()
    if not cfg.tune.space:
        raise ConfigError(f"{cfg.source_file}: tune.space is empty; name the settings to tune (see projects/digits/project.yaml)")
    data = load_prepared_data(cfg, ctx, cfg.tune.dataset)
    storage_url = study_storage(cfg, ctx.options.get("storage"))
    prepare = ctx.tracker.get_run(ctx.upstream["prepare"]).data.tags
    study = open_study(cfg, storage_url, data_identity=prepare.get(TAG_CACHE_KEY, ctx.upstream["prepare"]))
    enqueue_baseline(study, cfg)
    run.set_tags({TAG_STUDY: study.study_name, "trainwise.optuna_storage": redact(storage_url)})
    log.info("study %s on %s: %d trials so far", study.study_name, redact(storage_url), len(study.trials))

    # Trials on the full data keep their weights: the best trial's model is then the model (no retraining).
    keep_weights = cfg.tune.retrain and cfg.tune.dataset == "full"
    objective = Objective(cfg, data, ctx.tracker, run, study.study_name, keep_weights=keep_weights)
    budget = MaxTrialsCallback(cfg.tune.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)) if cfg.tune.trials else None
    study.optimize(
        objective,
        n_trials=cfg.tune.trials,
        timeout=cfg.tune.timeout,
        callbacks=[budget] if budget else [],
        catch=(NonFiniteLossError,),  # a diverging trial fails; the study goes on
        gc_after_trial=True,
        show_progress_bar=bool(cfg.tune.trials) and sys.stderr.isatty(),  # Optuna's tqdm bar over trials, on a terminal
    )
    _end_runs_of_stale_trials(study, ctx.tracker)

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise ConfigError(f"study {study.study_name} has no completed trial; see the trial runs under {run.url}")
    best = study.best_trial
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    run.log_dict({"value": best.value, "params": best.params, "trial": best.number}, "best_params.json")
    run.log_params({f"best.{k}": v for k, v in best.params.items()})
    run.log_metrics({"best_value": float(best.value), **{f"trials_{k}": v for k, v in counts.items()}})
    _log_study_plots(study, run)
    outputs: dict[str, Any] = {"study": study.study_name, "best_value": best.value, "best_params": best.params, **counts}
    if cfg.tune.retrain:
        outputs |= finalise(cfg, ctx, run, study, data, keep_weights=keep_weights)
    run.set_description(_markdown(cfg, study, best, counts, outputs))
    return outputs


# -- the study ---------------------------------------------------------------------------------------


def study_storage(cfg: ProjectConfig, explicit: str | None = None) -> str:
    """The project's Optuna storage URL: --storage, else $TRAINWISE_OPTUNA_STORAGE, else tune.storage, else SQLite under .trainwise/."""
    return explicit or os.environ.get(STORAGE_ENV) or cfg.tune.storage or default_storage(cfg)


def default_storage(cfg: ProjectConfig) -> str:
    folder = trainwise_home() / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / f'{cfg.name}.db'}"


def study_definition(cfg: ProjectConfig, data_identity: str) -> dict[str, str]:
    """Everything that defines a study's objective, flat: what its trials are compared on.

    The metric and direction; every config value trials do not override (model, train, augment,
    split, image, task); the space, epochs, dataset, sampler and pruner; the user's model code; and
    the data (prepare's key, which covers the data's content digest and the splits).
    """
    tune = cfg.tune
    fixed = {name: cfg.section(name) for name in ("task", "model", "train", "augment", "split", "image")}
    flat = {key: value for key, value in flatten(fixed).items() if not any(key == k or key.startswith(f"{k}.") for k in tune.space)}
    study = {
        "metric": cfg.task.metric, "direction": cfg.task.direction, "dataset": tune.dataset, "epochs": tune.epochs or cfg.train.epochs,
        "sampler": tune.sampler, "pruner": tune.pruner, "warmup_epochs": tune.warmup_epochs, "seed": tune.seed,
        "space": {k: v.model_dump(mode="json") for k, v in tune.space.items()}, "user_code": user_content(cfg), "data": data_identity,
    }  # fmt: skip
    return {**{f"config.{k}": v for k, v in flat.items()}, **flatten({"study": study})}


def open_study(cfg: ProjectConfig, storage_url: str, *, data_identity: str) -> optuna.Study:
    tune = cfg.tune
    definition = study_definition(cfg, data_identity)
    # One study per definition: the same objective resumes the same study, any other makes a new one.
    name = f"{cfg.name}-{short_hash(definition, 10)}"
    sampler_class = SAMPLERS.get(tune.sampler) or getattr(optuna.samplers, tune.sampler, None)
    if sampler_class is None:
        raise ConfigError(f"tune.sampler {tune.sampler!r} is not an Optuna sampler; choose {', '.join(SAMPLERS)} or a class name")
    pruner_class = PRUNERS.get(tune.pruner)
    if pruner_class is None:
        raise ConfigError(f"tune.pruner {tune.pruner!r}: choose one of {', '.join(PRUNERS)}")
    sampler = sampler_class(seed=tune.seed) if "seed" in sampler_class.__init__.__code__.co_varnames else sampler_class()
    if pruner_class is optuna.pruners.MedianPruner:
        pruner = pruner_class(n_startup_trials=2, n_warmup_steps=tune.warmup_epochs)
    elif pruner_class is optuna.pruners.NopPruner:
        pruner = pruner_class()
    else:
        pruner = pruner_class(min_resource=max(1, tune.warmup_epochs))
    storage = make_storage(storage_url, cfg)
    known = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    study = optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=name, direction=cfg.task.direction, load_if_exists=True,
    )  # fmt: skip
    stored = study.user_attrs.get(DEFINITION_ATTR)
    if stored is None and name not in known:
        study.set_user_attr(DEFINITION_ATTR, definition)
        _log_why_new(name, definition, [s for n, s in known.items() if n.startswith(f"{cfg.name}-")])
    elif stored != definition:  # same name, other objective: its best trial would answer another question
        differing = sorted(k for k in set(definition) | set(stored or {}) if definition.get(k) != (stored or {}).get(k))
        raise ConfigError(
            f"study {name} in {redact(storage_url)} was made for another objective"
            + (f" (differs in {', '.join(differing[:8])})" if stored else " (it records no definition)")
            + "; delete it (optuna delete-study) or change tune settings to start a new study"
        )
    return study


def _log_why_new(name: str, definition: dict[str, str], others: list[Any]) -> None:
    """A new study next to older ones of the project: say which settings made it new."""
    for other in sorted(others, key=lambda s: s.datetime_start or 0, reverse=True)[:1]:
        previous = other.user_attrs.get(DEFINITION_ATTR) or {}
        differing = sorted(k for k in set(definition) | set(previous) if definition.get(k) != previous.get(k))
        log.info("new study %s: differs from study %s in %s", name, other.study_name, ", ".join(differing[:8]) or "its name")


def baseline_params(cfg: ProjectConfig) -> dict[str, Any]:
    """The project's own values of the tuned settings (those set and inside their distribution)."""
    tree = cfg.to_dict()
    found: dict[str, Any] = {}
    for key, param in cfg.tune.space.items():
        node = _value_at(tree, key)
        if node is None or any(found.get(other, _value_at(tree, other)) != value for other, value in (param.when or {}).items()):
            continue
        if isinstance(param, CategoricalParam):
            inside = node in param.choices
        else:
            inside = isinstance(node, int | float) and param.low <= node <= param.high
        if inside:
            found[key] = node
    return found


def _value_at(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def enqueue_baseline(study: optuna.Study, cfg: ProjectConfig) -> None:
    """Trial 0 is the project's own configuration, so the study's best is never worse on validation
    than the untuned model (skip_if_exists: several workers opening one study enqueue it once)."""
    if study.trials:
        return
    params = baseline_params(cfg)
    study.enqueue_trial(params, user_attrs={BASELINE_ATTR: sorted(params)}, skip_if_exists=True)
    log.info("study %s: trial 0 is the project's own configuration %s", study.study_name, params)


def make_storage(url: str, cfg: ProjectConfig) -> optuna.storages.BaseStorage:
    """A journal file for paths ending .log/.journal; an RDB storage (heartbeats on) for database URLs."""
    if "://" not in url:
        path = Path(url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # Workers started together on an empty database race to create Optuna's schema (PostgreSQL:
    # UniqueViolation on the `studydirection` enum type); a loser opens it again once the winner is done.
    for attempt in range(1, 5):
        try:
            return _rdb_storage(url, cfg)
        except SQLAlchemyError as exc:
            log.info("opening the Optuna storage failed (%s); retrying", type(exc).__name__)
            time.sleep(0.5 * attempt)
    try:
        return _rdb_storage(url, cfg)
    except SQLAlchemyError as exc:
        raise ConfigError(
            f"could not open the Optuna storage {redact(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Check the address, the database and its credentials (--storage, tune.storage or $TRAINWISE_OPTUNA_STORAGE)"
        ) from None


def _rdb_storage(url: str, cfg: ProjectConfig) -> RDBStorage:
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            heartbeat_interval=cfg.tune.heartbeat_s,
            grace_period=cfg.tune.grace_s,
            # A killed worker's trial is failed once its heartbeat is stale, then queued again with the same params.
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )


def suggest(trial: optuna.Trial, space: dict[str, FloatParam | IntParam | CategoricalParam]) -> dict[str, Any]:
    """Every parameter whose `when` conditions hold, in the space's order (conditions name earlier keys)."""
    chosen: dict[str, Any] = {}
    pending = dict(space)
    while pending:
        progressed = False
        for key, param in list(pending.items()):
            conditions = param.when or {}
            if any(other in pending for other in conditions):
                continue  # decide its conditions first
            del pending[key]
            progressed = True
            if any(chosen.get(other) != value for other, value in conditions.items()):
                continue
            if isinstance(param, FloatParam):
                chosen[key] = trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
            elif isinstance(param, IntParam):
                chosen[key] = trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)
            else:
                chosen[key] = trial.suggest_categorical(key, param.choices)
        if not progressed:
            raise ConfigError(f"tune.space: the `when` conditions of {', '.join(pending)} depend on each other in a cycle")
    return chosen


class PruningCallback(Callback):
    """Reports the validation metric every epoch; Optuna decides whether the trial goes on."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.key = f"val_{metric}"

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.key], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.key} {metrics[self.key]:.4f})")


class Objective:
    """One trial: suggest, train (reporting each epoch), return the best validation metric."""

    def __init__(
        self, cfg: ProjectConfig, data: PreparedData, tracker: Tracker, parent: StepRun, study: str, *, keep_weights: bool = False
    ) -> None:
        self.cfg, self.data, self.tracker, self.parent, self.study = cfg, data, tracker, parent, study
        self.keep_weights = keep_weights  # log each completed trial's best weights (the best one becomes the model)

    def __call__(self, trial: optuna.Trial) -> float:
        space = self.cfg.tune.space
        baseline = trial.user_attrs.get(BASELINE_ATTR)
        if baseline is not None:  # the project's own config: the settings it leaves unset stay unset
            space = {key: param for key, param in space.items() if key in baseline}
        params = suggest(trial, space)
        trial_cfg = with_overrides(self.cfg, params)
        metric = trial_cfg.task.metric or "accuracy"
        tags = {TAG_TRIAL: str(trial.number), TAG_STUDY: self.study, "trainwise.worker": f"{socket.gethostname()}:{os.getpid()}"}
        pruned: optuna.TrialPruned | None = None
        with self.tracker.run("trial", parent=self.parent, tags=tags, run_name=f"trial {trial.number}") as child:
            trial.set_user_attr(RUN_ATTR, child.run_id)
            child.log_params({**params, "trial": trial.number})
            trainer = make_trainer(
                trial_cfg, self.data, self.tracker,
                callbacks=[TrackingCallback(child, step_losses=False), PruningCallback(trial, metric)],
                epochs=self.cfg.tune.epochs, progress=f"trial {trial.number}",
            )  # fmt: skip
            try:
                result = trainer.fit(self.data.splits["train"], self.data.splits.get("val"))
            except optuna.TrialPruned as signal:
                pruned = signal
                child.set_tags({TAG_TRIAL_STATE: "pruned"})
            except BaseException:  # diverged, interrupted, or a bug: the run ends FAILED (or KILLED) and says so
                child.set_tags({TAG_TRIAL_STATE: "failed"})
                raise
            else:
                child.set_tags({TAG_TRIAL_STATE: "complete"})
                child.log_metrics({"best_value": result.best_value})
                if self.keep_weights:
                    _log_trial_weights(child, result.best_state)
        if pruned is not None:  # the child run ended FINISHED, tagged pruned; Optuna records PRUNED
            raise pruned
        return float(result.best_value)


def _end_runs_of_stale_trials(study: optuna.Study, tracker: Tracker) -> None:
    """Trials failed for a stale heartbeat (their worker died) leave RUNNING child runs: end them FAILED."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(RUN_ATTR)
        if not run_id:
            continue
        run = tracker.get_run(run_id)
        # RUNNING, or already FAILED by trainwise's own owner check (Tracker.end_orphaned_runs) but not
        # yet marked as a failed trial: a trial that raised was tagged when it failed.
        if run.info.status == "RUNNING" or (TAG_TRIAL_STATE not in run.data.tags and run.data.tags.get("trainwise.orphaned") == "true"):
            reason = "its worker stopped sending heartbeats; the trial was retried"
            tracker.end_run(run_id, "FAILED", reason=reason, tags={TAG_TRIAL_STATE: "failed"})


def _log_study_plots(study: optuna.Study, run: StepRun) -> None:
    from optuna.visualization import matplotlib as views

    plots = {
        "optimization_history": views.plot_optimization_history,
        "intermediate_values": views.plot_intermediate_values,
        "parallel_coordinate": views.plot_parallel_coordinate,
        "slice": views.plot_slice,
        "param_importances": views.plot_param_importances,
    }
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental; we chose them knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances need 2+ completed trials
            log.info("study plot %s skipped: %s", name, exc)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        run.log_figure(figure, f"study/{name}.png")
        plt.close(figure)


# -- the best configuration ---------------------------------------------------------------------------

TRIAL_WEIGHTS = "weights/model.safetensors"  # a completed trial's best-epoch weights (tune.dataset: full)


def _log_trial_weights(run: StepRun, state: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="trainwise-trial-") as tmp:
        path = Path(tmp) / Path(TRIAL_WEIGHTS).name
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
        run.log_artifact(path, str(Path(TRIAL_WEIGHTS).parent))


def _trial_has_weights(tracker: Tracker, trial: FrozenTrial) -> bool:
    """False for a best trial finished before its weights were kept (a study resumed across versions)."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    return bool(run_id) and TRIAL_WEIGHTS in tracker.list_artifacts(run_id, str(Path(TRIAL_WEIGHTS).parent))


def finalise(cfg: ProjectConfig, ctx: StepContext, run: StepRun, study: optuna.Study, data: PreparedData, *, keep_weights: bool) -> dict[str, Any]:
    """Register the study's result once, whatever the number of workers.

    The worker that finds no trial still running or waiting finalises (the last to finish). Two that
    finish together both register; each then looks up the versions registered for this study's
    best trial and only the lowest one stands: the others are deleted before any alias moves.
    A result already registered (a rerun, or a worker that finished first) is reported, not redone.
    """
    best = study.best_trial
    name = cfg.registry.model_name or cfg.name
    active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if active:
        log.info("study %s: %d trials still running in other workers; the last worker to finish registers the result", study.study_name, len(active))
        run.set_tags({TAG_FINALISED: "false"})
        return {"finalised": False}
    claim = {TAG_STUDY: study.study_name, TAG_BEST_TRIAL: str(best.number)}
    done = Registry(ctx.tracker.tracking_uri).versions_tagged(name, claim)
    if done:
        log.info("study %s: its best trial %d is already registered as %s version %s", study.study_name, best.number, name, done[0].version)
        run.set_tags({TAG_FINALISED: "false", "trainwise.registered_version": done[0].version})
        return {"finalised": False, "version": done[0].version, "registered_model": name}
    best_cfg = with_overrides(cfg, best.params)
    if keep_weights and _trial_has_weights(ctx.tracker, best):
        return register_best_trial(best_cfg, ctx, run, best, data, claim=claim)  # data: the full data the trials used
    return retrain_and_register(best_cfg, ctx, run, best, claim=claim)


def register_best_trial(
    cfg: ProjectConfig, ctx: StepContext, parent: StepRun, best: FrozenTrial, full: PreparedData, *, claim: dict[str, str]
) -> dict[str, Any]:
    """Tuning ran on the full data: the best trial's own weights, evaluated on the test split and registered."""
    metric = cfg.task.metric or "accuracy"
    trial_run = best.user_attrs[RUN_ATTR]
    with tempfile.TemporaryDirectory(prefix="trainwise-best-") as tmp:
        weights = ctx.tracker.download_artifact(trial_run, TRIAL_WEIGHTS, Path(tmp))
        trainer = make_trainer(cfg, full, ctx.tracker, callbacks=[], epochs=cfg.tune.epochs, progress="retrain best trial")
        trainer.model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    with ctx.tracker.run("best", parent=parent, run_name=f"best (trial {best.number})", tags={"trainwise.trial_run": trial_run}) as child:
        child.log_params({**best.params, "trial": best.number})
        child.set_description(f"The best trial's own model ([trial {best.number}]({ctx.tracker.url_of(ctx.tracker.get_run(trial_run))})), not retrained.")
        uri, finals = _test_and_log_model(cfg, ctx, child, trainer, full, {"best_val_" + metric: float(best.value)})
    return _register(cfg, ctx, parent, uri, source_run=child.run_id, finals=finals, claim=claim) | {"from_trial": True}


def retrain_and_register(cfg: ProjectConfig, ctx: StepContext, parent: StepRun, best: FrozenTrial, *, claim: dict[str, str]) -> dict[str, Any]:
    """Train the best configuration on the full training data, evaluate it on the test split, register it."""
    full = load_prepared_data(cfg, ctx, "full")
    metric = cfg.task.metric or "accuracy"
    with ctx.tracker.run("retrain", parent=parent, run_name=f"best (trial {best.number})") as child:
        child.log_params({**best.params, "trial": best.number})
        trainer = make_trainer(cfg, full, ctx.tracker, callbacks=[TrackingCallback(child)], progress="retrain best trial")
        result = trainer.fit(full.splits["train"], full.splits.get("val"))
        trainer.model.load_state_dict(result.best_state)
        uri, finals = _test_and_log_model(cfg, ctx, child, trainer, full, {"best_val_" + metric: result.best_value})
    return _register(cfg, ctx, parent, uri, source_run=child.run_id, finals=finals, claim=claim)


def _test_and_log_model(
    cfg: ProjectConfig, ctx: StepContext, run: StepRun, trainer: Trainer, full: PreparedData, finals: dict[str, float]
) -> tuple[str, dict[str, float]]:
    """Score the final model on the test split (once), log the metrics and the servable model; (model URI, metrics)."""
    if "test" in full.splits:
        finals = finals | {f"test_{k}": v for k, v in predict_split(trainer, full, full.splits["test"]).metrics.items()}
    run.log_metrics(finals)
    uri = serving.log_model(run.run_id, tracking_uri=run.tracking_uri, model=trainer.model.cpu(), spec=model_spec(cfg, full), input_example=input_example(cfg, ctx, full))
    try:  # the study's best model beside the classical baseline; a failure costs a warning, not the model
        baseline = fit_baseline(full, seed=cfg.train.seed)
    except (ValueError, MemoryError) as exc:
        log.warning("no baseline: %s: %s", type(exc).__name__, exc)
    else:
        run.log_metrics(logged_metrics(baseline))
        run.set_tags({"trainwise.baseline": against_network(baseline, finals, cfg.task.metric or "accuracy", maximize=cfg.task.direction == "maximize")})
    return uri, finals


def _register(
    cfg: ProjectConfig, ctx: StepContext, parent: StepRun, uri: str, *, source_run: str, finals: dict[str, float], claim: dict[str, str]
) -> dict[str, Any]:
    """A new version of the project's registered model from `uri`, with its provenance, aliased `challenger`
    unless another worker registered the same result first (see `finalise`)."""
    check = ctx.tracker.get_run(ctx.upstream["check"]) if "check" in ctx.upstream else None
    ingest = ctx.tracker.get_run(ctx.upstream["ingest"])
    tags = {
        "trainwise.source_run": source_run,
        "trainwise.tune_run": parent.run_id,
        "trainwise.data_digest": ingest.data.tags.get("trainwise.data_digest", ""),
        # The splits it was trained and selected on: promote sees when another holdout overlaps them.
        "trainwise.prepare_run": ctx.upstream["prepare"],
        "trainwise.split_digest": ctx.tracker.get_run(ctx.upstream["prepare"]).data.tags.get("trainwise.split_digest", ""),
        "trainwise.checks": check.data.tags.get("trainwise.checks", "skipped") if check else "skipped",
        "trainwise.checks_passed": check.data.tags.get("trainwise.passed", "false") if check else "false",
        "trainwise.config_hash": cfg.config_hash(),
        **{f"trainwise.{k}": f"{v:.6g}" for k, v in finals.items() if k.startswith("test_")},
        **claim,
    }
    registry = Registry(ctx.tracker.tracking_uri)
    name = cfg.registry.model_name or cfg.name
    version = registry.register(uri, name, tags=tags)
    # Version numbers grow in commit order: the lowest version of this result was registered first.
    first = registry.versions_tagged(name, claim)[0]
    if first.version != version.version:
        registry.delete_version(name, version.version)
        log.info("another worker registered this study's result first (version %s); dropped version %s", first.version, version.version)
        parent.set_tags({TAG_FINALISED: "false", "trainwise.registered_version": first.version})
        return {"finalised": False, "version": first.version, "registered_model": name, **finals}
    registry.set_alias(name, CHALLENGER, version.version)
    parent.set_tags({TAG_FINALISED: "true"})
    parent.set_tags({"trainwise.registered_version": version.version, "trainwise.model_uri": uri})
    log.info("registered %s version %s as %s (%s)", name, version.version, CHALLENGER, registry.url(name, version.version))
    return {"model_uri": uri, "version": version.version, "registered_model": name, "finalised": True, **finals}


def _markdown(cfg: ProjectConfig, study: optuna.Study, best: FrozenTrial, counts: dict[str, int], outputs: dict[str, Any]) -> str:
    lines = [
        f"# {cfg.name}: tuning", "",
        f"Study `{study.study_name}`: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed trials.", "",
        f"Best: trial {best.number}, validation {cfg.task.metric} {best.value:.4f}", "",
        "| parameter | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in best.params.items()), "",
    ]  # fmt: skip
    if outputs.get("finalised") is False:
        found = f" (version {outputs['version']})" if "version" in outputs else ""
        lines.append(f"The study's result is registered by the last worker to finish{found}, not by this one.")
    elif "version" in outputs:
        how = "The best trial's own model" if outputs.get("from_trial") else "Retrained on the full data and"
        lines.append(f"{how} registered as `{outputs['registered_model']}` version {outputs['version']}, alias `challenger`.")
    lines.append("Plots of the study under `study/`; one child run per trial.")
    return "\n".join(lines)


def redact(url: str) -> str:
    """A storage URL without its password, for tags and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user, has_password, _ = credentials.partition(":")
        return f"{scheme}://{user}{':***' if has_password else ''}@{host}"
    return url
