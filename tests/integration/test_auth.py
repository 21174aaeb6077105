"""Sharing a server: MLflow's basic-auth app started by trainwise, with real HTTP requests."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from tests.conftest import free_port
from trainwise.errors import ServerError
from trainwise.server import LocalServer

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("auth-home"), port=free_port(), auth=True)
    server.start(timeout=120)
    yield server
    server.stop()


def status_of(url: str, credentials: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if credentials is not None:
        request.add_header("Authorization", "Basic " + b64encode(":".join(credentials).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_credentials_are_required_and_the_admin_password_is_private(auth_server: LocalServer) -> None:
    url = auth_server.ui_url()
    credentials = auth_server.admin_credentials()
    assert credentials is not None
    assert stat.S_IMODE(auth_server.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth_server.auth_config.stat().st_mode) == 0o600
    assert status_of(url) == 401
    assert status_of(url, (credentials[0], credentials[1] + "x")) == 401
    assert status_of(url, credentials) == 200
    # The password is made once: a restart keeps it.
    auth_server.stop()
    auth_server.start(timeout=120)
    assert auth_server.admin_credentials() == credentials and status_of(url, credentials) == 200


def test_a_read_only_user_reads_but_cannot_write(auth_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = auth_server.ui_url()
    admin = auth_server.admin_credentials()
    assert admin is not None
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    get_app_client("basic-auth", tracking_uri=url).create_user("reader", "reader-password-1")
    experiment = MlflowClient(url).create_experiment("owned-by-admin")
    MlflowClient(url).create_run(experiment)  # the admin writes

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-password-1")
    reader = MlflowClient(url)
    assert reader.get_experiment(experiment).name == "owned-by-admin"  # READ is the default permission
    with pytest.raises(MlflowException) as refused:
        reader.create_run(experiment)
    assert refused.value.get_http_status_code() == 403


def test_trainwise_steps_run_with_credentials_from_the_environment(
    auth_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = auth_server.admin_credentials()
    assert admin is not None
    env = {**os.environ, "MLFLOW_TRACKING_URI": auth_server.ui_url(), "TRAINWISE_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    command = [sys.executable, "-m", "trainwise", "understand", "--project", str(REPO / "projects" / "wine"), "--set", "name=auth-wine"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "MLFLOW_TRACKING_USERNAME" in refused.stderr, refused.stderr[-2000:]
    env.update({"MLFLOW_TRACKING_USERNAME": admin[0], "MLFLOW_TRACKING_PASSWORD": admin[1]})
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
    client = MlflowClient(auth_server.ui_url())
    experiment = client.get_experiment_by_name("auth-wine")
    assert experiment is not None
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FINISHED"]


def test_a_public_address_without_auth_is_refused_unless_insecure(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "home", host="0.0.0.0", port=free_port())
    with pytest.raises(ServerError, match="--auth") as refused:
        server.start()
    assert "--insecure" in str(refused.value)
    assert not server.pid_file.exists()
    insecure = LocalServer(tmp_path / "home", host="0.0.0.0", port=free_port(), insecure=True)  # said explicitly
    try:
        assert insecure.start(timeout=120).running
    finally:
        insecure.stop()
