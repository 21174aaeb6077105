"""serving.log_model logs to the tracking URI it is given, whatever MLflow's global one says."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import free_port
from tests.integration.test_serving import IMAGE_SPEC as SPEC
from trainwise.models import create_model
from trainwise.serving import log_model
from trainwise.tracking import Tracker


def test_log_model_lands_on_its_server_while_the_global_tracking_uri_points_elsewhere(
    tracking_server: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(image)
    network = create_model(SPEC["model"], input_shape=tuple(SPEC["input_shape"]), num_outputs=SPEC["num_outputs"], params=SPEC["params"]).eval()
    tracker = Tracker(unique_name, tracking_server)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a wrong address fails in seconds, not minutes
    with tracker.run("train") as run:
        # What another library, a notebook cell or a second tracker may leave behind.
        mlflow.set_tracking_uri(nowhere)
        try:
            uri = log_model(
                run.run_id, tracking_uri=run.tracking_uri, model=network, spec=SPEC, input_example=pd.DataFrame({"image": [str(image)]})
            )
            assert mlflow.get_tracking_uri() == nowhere  # put back as it was
            assert os.environ["MLFLOW_TRACKING_URI"] == nowhere
        finally:
            mlflow.set_tracking_uri(tracking_server)  # the session's other tests rely on it
    client = MlflowClient(tracking_server)
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.source_run_id == run.run_id and str(logged.status) == "READY"
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
