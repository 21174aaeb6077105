"""Steps 4 and 5 through the CLI against the fixture server: checks, the gate, training, resume, the model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.helpers import invoke, step_runs

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow




def test_digits_check_train_and_the_served_model(tracking_server: str, unique_name: str, tmp_path: Path, session_home: Path) -> None:
    invoke("run", "--project", DIGITS, "--set", f"name={unique_name} train.epochs=3", "--dry-run")
    client = MlflowClient(tracking_server)

    (check,) = step_runs(tracking_server, unique_name, "check")
    assert check.info.status == "FINISHED" and check.data.tags["trainwise.passed"] == "true"
    report = json.loads(Path(client.download_artifacts(check.info.run_id, "checks.json", str(tmp_path))).read_text())
    names = {row["name"] for row in report["checks"]}
    assert {"loss_at_init", "overfit_one_batch", "batch_independence", "lr_range_test", "label_shuffle_control"} <= names
    assert any(name.startswith("data_") for name in names)  # carried over from ingest, sample, prepare
    assert check.data.metrics["check.batch_independence"] == 1.0
    assert "suggested_lr" in check.data.metrics

    (train,) = step_runs(tracking_server, unique_name, "train")
    assert train.info.status == "FINISHED"
    metrics = train.data.metrics
    assert {"test_accuracy", "val_accuracy", "best_val_accuracy", "images_per_second", "check.full_beats_sample"} <= set(metrics)
    assert any(key.startswith("system/") for key in metrics)
    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    figures = {a.path for a in client.list_artifacts(train.info.run_id, "evaluation")}
    assert {"evaluation/learning_curves.png", "evaluation/test_confusion_matrix.png", "evaluation/val_worst_errors.png"} <= figures

    # The logged model predicts from raw image files.
    model = mlflow.pyfunc.load_model(train.data.tags["trainwise.model_uri"])
    test_images = sorted((session_home / "data" / "digits" / "test").glob("*.png"))[:5]
    predicted = model.predict(pd.DataFrame({"image": [str(p) for p in test_images]}))
    assert list(predicted.columns[:2]) == ["label", "index"] and len(predicted) == 5
    assert set(predicted["label"]) <= {str(d) for d in range(10)}
    assert predicted.filter(like="prob_").sum(axis=1).round(4).eq(1).all()


def test_failed_checks_stop_training_unless_skipped(tracking_server: str, unique_name: str) -> None:
    args = ("--project", DIGITS, "--set", f"name={unique_name} checks.min_loss_decrease=0.999", "--dry-run")
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    output = invoke("check", *args, code=1)
    assert "checks failed (training_loss_decreases)" in output
    (check,) = step_runs(tracking_server, unique_name, "check")
    assert check.info.status == "FINISHED" and check.data.tags["trainwise.passed"] == "false"

    output = invoke("train", *args, code=1)
    assert "pipeline checks for this data and config failed" in output and "--skip-checks" in output
    invoke("train", *args, "--skip-checks")
    trained = [r for r in step_runs(tracking_server, unique_name, "train") if r.info.status == "FINISHED"]
    assert len(trained) == 1 and trained[0].data.tags["trainwise.skip_checks"] == "true"


@pytest.mark.parametrize("project", ["wine", "diabetes"])
def test_tabular_training_and_model(tracking_server: str, unique_name: str, project: str) -> None:
    # diabetes: the sample is drawn from the full training split (265 of 442 rows); 200 of them keep
    # the checks' own validation split (30 rows) large enough to judge "beats the trivial baseline".
    extra = " sample.size=200" if project == "diabetes" else ""
    invoke("run", "--project", str(REPO / "projects" / project), "--set", f"name={unique_name} train.epochs=20{extra}", "--dry-run")
    (train,) = step_runs(tracking_server, unique_name, "train")
    model = mlflow.pyfunc.load_model(train.data.tags["trainwise.model_uri"])
    from sklearn import datasets

    frame = getattr(datasets, f"load_{project}")(as_frame=True).frame.drop(columns=["target"]).head(4)
    predicted = model.predict(frame)
    if project == "wine":
        assert train.data.metrics["test_accuracy"] > 0.8
        assert set(predicted["label"]) <= {"class_0", "class_1", "class_2"}
    else:
        assert train.data.metrics["test_rmse"] < 75  # the target's std is 77
        assert predicted["prediction"].between(25, 346).all()  # in the target's units, not standardised


def test_an_interrupted_training_resumes_in_the_same_run_to_the_same_result(
    tracking_server: str, unique_name: str, session_home: Path
) -> None:
    settings = f"name={unique_name} train.epochs=20 train.early_stopping_patience=null checks.learning_curve_fractions=[]"
    args = ["--project", DIGITS, "--set", settings, "--dry-run"]
    for step in ("ingest", "sample", "prepare", "check", "train"):
        invoke(step, *args)  # the uninterrupted reference, and every step it needs
    (reference,) = step_runs(tracking_server, unique_name, "train")

    before = set((session_home / "checkpoints").glob("*/last.pt"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "TRAINWISE_HOME": str(session_home)}
    process = subprocess.Popen([sys.executable, "-m", "trainwise", "train", *args, "--force"], env=env, cwd=REPO)
    deadline = time.monotonic() + 180
    while not (set((session_home / "checkpoints").glob("*/last.pt")) - before) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    killed = next(r for r in step_runs(tracking_server, unique_name, "train") if r.info.run_id != reference.info.run_id)
    assert killed.info.status == "KILLED"
    assert [a.path for a in MlflowClient(tracking_server).list_artifacts(killed.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]

    invoke("train", *args, "--resume")
    resumed = MlflowClient(tracking_server).get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["trainwise.resumed"] == "true"
    assert len(step_runs(tracking_server, unique_name, "train")) == 2  # the same run, not a third

    def by_epoch(run_id: str) -> dict[int, float]:
        return {m.step: m.value for m in MlflowClient(tracking_server).get_metric_history(run_id, "val_loss")}

    assert by_epoch(killed.info.run_id) == by_epoch(reference.info.run_id)
    assert resumed.data.metrics["test_accuracy"] == reference.data.metrics["test_accuracy"]
