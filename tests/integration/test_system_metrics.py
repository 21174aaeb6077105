"""System metrics reach a step's run through MLflow's public API, on a real tracking server."""

from __future__ import annotations

import time

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from trainwise.tracking import Tracker


def test_a_training_run_records_system_metrics_and_stays_open(
    tracking_server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.25")  # MLflow's own knob; 10 s by default
    tracker = Tracker(unique_name, tracking_server)
    client = MlflowClient(tracking_server)
    with tracker.run("train") as run:
        with run.system_metrics():
            active = mlflow.active_run()
            assert active is not None and active.info.run_id == run.run_id  # the public monitor's run
            # A small real training, long enough for several sampling intervals.
            model = torch.nn.Linear(64, 10)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
        assert mlflow.active_run() is None  # nothing left active for later fluent calls (or atexit) to end
        assert client.get_run(run.run_id).info.status == "RUNNING"  # the step goes on after training
        run.log_metrics({"after_training": 1.0})
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(finished.data.metrics)
    assert len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) >= 2
