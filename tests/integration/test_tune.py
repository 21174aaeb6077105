"""Step 6 against the fixture server: a small study, and several workers sharing one study on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.helpers import invoke, step_runs
from trainwise.tracking import CHALLENGER, Registry

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow




def test_a_small_study_with_child_runs_pruning_plots_and_a_challenger(tracking_server: str, unique_name: str) -> None:
    settings = f"name={unique_name} train.epochs=4 tune.epochs=4 tune.trials=6 tune.warmup_epochs=1"
    for step in ("ingest", "sample", "prepare", "check", "tune"):
        invoke(step, "--project", DIGITS, "--set", settings, "--dry-run")
    (tune,) = step_runs(tracking_server, unique_name, "tune")
    assert tune.info.status == "FINISHED"
    trials = step_runs(tracking_server, unique_name, "trial")
    assert len(trials) >= 6
    assert all(t.data.tags["mlflow.parentRunId"] == tune.info.run_id for t in trials)
    states = [t.data.tags.get("trainwise.trial_state") for t in trials]
    assert set(states) <= {"complete", "pruned"}
    assert states.count("pruned") == tune.data.metrics["trials_pruned"]  # the runs' tags agree with Optuna
    client = MlflowClient(tracking_server)
    for pruned in (t for t in trials if t.data.tags["trainwise.trial_state"] == "pruned"):
        assert len(client.get_metric_history(pruned.info.run_id, "val_loss")) < 4  # stopped before its last epoch
    assert all("trainwise.trial" in t.data.tags and "train.lr" in t.data.params for t in trials)
    plots = {a.path for a in client.list_artifacts(tune.info.run_id, "study")}
    assert {"study/optimization_history.png", "study/intermediate_values.png", "study/slice.png"} <= plots
    assert tune.data.metrics["trials_complete"] + tune.data.metrics["trials_pruned"] >= 6
    assert any(k.startswith("best.") for k in tune.data.params)
    # Trial 0 is the project's own configuration: the study's best can only match or beat it.
    (baseline,) = (t for t in trials if t.data.tags["trainwise.trial"] == "0")
    assert baseline.data.params["train.lr"] == "0.003" and baseline.data.params["model.name"] == "simple_cnn"
    assert "model.params.dropout" not in baseline.data.params  # the project leaves it unset: not sampled either
    if "best_value" in baseline.data.metrics:
        assert tune.data.metrics["best_value"] >= baseline.data.metrics["best_value"]

    version = Registry(tracking_server).by_alias(f"trainwise-{unique_name}", CHALLENGER)
    assert version is not None
    assert version.tags["trainwise.checks_passed"] == "true" and "trainwise.test_accuracy" in version.tags
    assert version.tags["trainwise.tune_run"] == tune.info.run_id
    # Tuned on the full data (the digits default): the best trial's own weights, not a second training.
    (best,) = step_runs(tracking_server, unique_name, "best")
    assert version.tags["trainwise.source_run"] == best.info.run_id
    assert best.data.metrics["best_val_accuracy"] == tune.data.metrics["best_value"]
    assert best.data.tags["trainwise.trial_run"] in {t.info.run_id for t in trials}
    assert not step_runs(tracking_server, unique_name, "retrain")


@pytest.fixture
def postgres_storage() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for one study; dropped afterwards."""
    name = f"tw_optuna_{uuid.uuid4().hex[:8]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
    subprocess.run([*psql, f'CREATE DATABASE "{name}"'], check=True, capture_output=True, timeout=60)
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    subprocess.run([*psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False, capture_output=True, timeout=60)


def worker(storage: str, settings: str, server: str, home: Path, log: Path) -> subprocess.Popen:
    """A `trainwise tune` process; its output goes to a file (an unread pipe fills up and blocks it)."""
    # One thread each, as one would run two workers on this 2-core machine (two threads each oversubscribe it).
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "TRAINWISE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    with log.open("w") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "trainwise", "-q", "tune", "--project", DIGITS, "--set", settings, "--dry-run", "--storage", storage],
            env=env, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
        )  # fmt: skip


def the_study(storage: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgresql(
    tracking_server: str, unique_name: str, session_home: Path, postgres_storage: str, tmp_path: Path
) -> None:
    # Retraining on (tune.dataset sample): each worker could register; exactly one version must result.
    settings = f"name={unique_name} registry.model_name={unique_name} tune.epochs=2 tune.trials=6 tune.pruner=none tune.dataset=sample"
    for step in ("ingest", "sample", "prepare", "check"):
        invoke(step, "--project", DIGITS, "--set", settings, "--dry-run")
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [worker(postgres_storage, settings, tracking_server, session_home, log) for log in logs]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    study = the_study(postgres_storage)
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(finished) >= 6  # the study's budget; each worker checks it before a new trial
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    child_runs = step_runs(tracking_server, unique_name, "trial")
    assert sorted(int(r.data.tags["trainwise.trial"]) for r in child_runs) == sorted(numbers)  # every trial has its run
    assert len({r.data.tags["trainwise.worker"] for r in child_runs}) == 2  # both workers took trials
    assert len({r.data.tags["mlflow.parentRunId"] for r in child_runs}) == 2  # each under its worker's tune run

    # One finaliser: one registered version for the study, the challenger, from one of the two tune runs.
    client = MlflowClient(tracking_server)
    versions = client.search_model_versions(f"name = '{unique_name}'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    (version,) = versions
    assert version.tags["trainwise.study"] == study.study_name and version.tags["trainwise.best_trial"] == str(study.best_trial.number)
    assert Registry(tracking_server).by_alias(unique_name, CHALLENGER).version == version.version
    tunes = step_runs(tracking_server, unique_name, "tune")
    assert sorted(t.data.tags.get("trainwise.finalised") for t in tunes) == ["false", "true"]
    assert version.tags["trainwise.tune_run"] in {t.info.run_id for t in tunes if t.data.tags["trainwise.finalised"] == "true"}


@pytest.mark.postgres
def test_a_killed_workers_trial_is_failed_and_retried_with_the_same_params(
    tracking_server: str, unique_name: str, session_home: Path, postgres_storage: str, tmp_path: Path
) -> None:
    settings = f"name={unique_name} tune.epochs=10 tune.trials=1 tune.retrain=false tune.pruner=none tune.heartbeat_s=1 tune.grace_s=3"
    for step in ("ingest", "sample", "prepare", "check"):
        invoke(step, "--project", DIGITS, "--set", settings, "--dry-run")
    first = worker(postgres_storage, settings, tracking_server, session_home, tmp_path / "first.log")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        summaries = optuna.get_all_study_summaries(postgres_storage) if first.poll() is None else []
        running = the_study(postgres_storage).get_trials(states=(TrialState.RUNNING,)) if summaries else []
        # killed once its trial has every parameter (its MLflow run is opened after the suggestions): a
        # kill between two suggestions leaves a partial trial, whose retry suggests the rest anew
        if running and "mlflow_run_id" in running[0].user_attrs:
            break
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # no handler runs: only the heartbeat tells
    first.wait(timeout=60)
    killed = the_study(postgres_storage).get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 1, (tmp_path / "first.log").read_text()[-3000:]

    second = worker(postgres_storage, settings, tracking_server, session_home, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    study = the_study(postgres_storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    (retried,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.number for t in failed] == [killed[0].number]
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retried) == killed[0].number
    assert retried.params == killed[0].params
    stale_run = MlflowClient(tracking_server).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert stale_run.info.status == "FAILED"  # not left RUNNING
    assert stale_run.data.tags["trainwise.trial_state"] == "failed"
    # The killed worker's own tune run, too: the second worker found its owner gone and ended it.
    (first_tune,) = (r for r in step_runs(tracking_server, unique_name, "tune") if r.data.tags.get("trainwise.owner.pid") == str(first.pid))
    assert first_tune.info.status == "FAILED" and "SIGKILL" in first_tune.data.tags["trainwise.error"]
