"""Faults injected for real (issue 12): processes killed outright, with a real tracking server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import invoke, step_runs
from trainwise.tracking import Tracker
from trainwise.tracking.liveness import TAG_HEARTBEAT, TAG_OWNER_PID, Owner

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow


def test_a_sigkilled_training_is_ended_failed_by_the_next_command(tracking_server: str, unique_name: str, session_home: Path) -> None:
    settings = f"name={unique_name} train.epochs=30 checks.learning_curve_fractions=[]"
    args = ["--project", DIGITS, "--set", settings, "--dry-run"]
    for step in ("ingest", "sample", "prepare"):
        invoke(step, *args)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "TRAINWISE_HOME": str(session_home)}
    process = subprocess.Popen([sys.executable, "-m", "trainwise", "train", *args, "--skip-checks"], env=env, cwd=REPO)
    client = MlflowClient(tracking_server)
    deadline = time.monotonic() + 180
    running = None
    while running is None and time.monotonic() < deadline and process.poll() is None:
        for run in step_runs(tracking_server, unique_name, "train"):
            if run.data.tags.get(TAG_OWNER_PID) == str(process.pid) and client.get_metric_history(run.info.run_id, "val_loss"):
                running = run
        time.sleep(0.3)
    assert running is not None, "the training never logged an epoch"
    process.kill()  # SIGKILL: no handler runs, the run cannot end itself
    process.wait(timeout=30)
    assert client.get_run(running.info.run_id).info.status == "RUNNING"

    output = invoke("status", *args)
    ended = client.get_run(running.info.run_id)
    assert ended.info.status == "FAILED"
    assert f"pid {process.pid}" in ended.data.tags["trainwise.error"] and "SIGKILL" in ended.data.tags["trainwise.error"]
    train_row = next(line for line in output.splitlines() if "│ train " in line)
    assert "failed" in train_row and "running" not in train_row

    invoke("train", *args, "--skip-checks")  # starts cleanly: a new run that finishes
    runs = step_runs(tracking_server, unique_name, "train")
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]


def test_runs_of_another_host_end_only_when_their_heartbeat_is_stale(
    tracking_server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINWISE_HEARTBEAT_TIMEOUT_S", "60")
    tracker = Tracker(unique_name, tracking_server)
    client = MlflowClient(tracking_server)

    def open_run(tags: dict[str, str]) -> str:
        run_id = client.create_run(tracker.experiment_id).info.run_id
        for key, value in {"trainwise.project": unique_name, "trainwise.step": "train", **tags}.items():
            client.set_tag(run_id, key, value)
        return run_id

    elsewhere = Owner("another-machine", "its-boot", 4242, time.time() - 3600).tags()
    silent = open_run({**elsewhere, TAG_HEARTBEAT: f"{time.time() - 120:.0f}"})
    beating = open_run({**elsewhere, TAG_HEARTBEAT: f"{time.time() - 5:.0f}"})
    foreign = open_run({})  # opened by someone else's code: no owner, not ours to end
    assert tracker.end_orphaned_runs() == [silent]
    assert client.get_run(silent).info.status == "FAILED"
    assert "no heartbeat" in client.get_run(silent).data.tags["trainwise.error"]
    assert client.get_run(beating).info.status == "RUNNING" and client.get_run(foreign).info.status == "RUNNING"
    for run_id in (beating, foreign):
        client.set_terminated(run_id, "KILLED")


def test_an_open_run_keeps_its_heartbeat_fresh(tracking_server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINWISE_HEARTBEAT_S", "0.2")
    tracker = Tracker(unique_name, tracking_server)
    client = MlflowClient(tracking_server)
    with tracker.run("train") as run:
        first = float(client.get_run(run.run_id).data.tags[TAG_HEARTBEAT])
        deadline = time.monotonic() + 20
        while float(client.get_run(run.run_id).data.tags[TAG_HEARTBEAT]) <= first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert float(client.get_run(run.run_id).data.tags[TAG_HEARTBEAT]) > first
