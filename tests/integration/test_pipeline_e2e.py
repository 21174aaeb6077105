"""The whole default pipeline through `mlflow run .` in tiny mode, then again with nothing changed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from trainwise.steps import STEP_NAMES
from trainwise.steps.runner import TAG_STEP_RUN
from trainwise.tracking import CHAMPION, Registry

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def mlflow_run(server: str, name: str, home: Path) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "TRAINWISE_HOME": str(home)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in MLproject = this venv's
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", name,
            "-P", f"project={REPO / 'projects' / 'digits'}", "-P", "dry_run=true",
            "-P", f"set=name={name} train.epochs=3 tune.epochs=2 tune.trials=3",
        ],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return time.monotonic() - started


def test_mlflow_run_main_goes_from_raw_data_to_a_submission_then_reuses_every_step(
    tracking_server: str, unique_name: str, session_home: Path, tmp_path: Path
) -> None:
    first = mlflow_run(tracking_server, unique_name, session_home)
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name(unique_name)
    pipelines = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'main'")
    assert len(pipelines) == 1  # mlflow run's own run, joined
    pipeline = pipelines[0]
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.metrics["steps_ran"] == len(STEP_NAMES)
    for step in STEP_NAMES:
        child = client.get_run(pipeline.data.tags[TAG_STEP_RUN + step])
        assert child.info.status == "FINISHED", step
        assert child.data.tags["mlflow.parentRunId"] == pipeline.info.run_id

    champion = Registry(tracking_server).by_alias(f"trainwise-{unique_name}", CHAMPION)
    assert champion is not None
    submit = client.get_run(pipeline.data.tags[TAG_STEP_RUN + "submit"])
    submission = pd.read_csv(client.download_artifacts(submit.info.run_id, "submission.csv", str(tmp_path)))
    assert len(submission) == 360 and list(submission.columns) == ["id", "label"]
    assert submit.data.metrics["submission_accuracy"] > 0.5

    second = mlflow_run(tracking_server, unique_name, session_home)
    pipelines = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'main'", order_by=["attributes.start_time DESC"])
    latest = pipelines[0]
    assert latest.data.metrics["steps_reused"] == len(STEP_NAMES) and latest.data.metrics["steps_ran"] == 0
    assert latest.data.tags[TAG_STEP_RUN + "submit"] == submit.info.run_id
    assert second < first / 2
