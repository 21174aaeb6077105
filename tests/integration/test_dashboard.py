"""`trainwise dashboard`: optuna-dashboard answering on loopback with the project's study, and its clear refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

from tests.conftest import REPO, free_port
from tests.helpers import invoke

DIGITS = str(REPO / "projects" / "digits")


def test_dashboard_serves_the_projects_study_until_sigterm(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="digits-study", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trainwise", "dashboard", "--project", DIGITS, "--set", f"tune.storage={storage}", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TRAINWISE_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    try:
        studies = None
        deadline = time.monotonic() + 60
        while studies is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, process.communicate(timeout=10)[0] if process.poll() is not None else "no answer in 60 s"
        (found,) = studies
        assert found["study_name"] == "digits-study" and found["directions"] == ["maximize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{found['study_id']}", timeout=10) as response:
            assert len(json.load(response)["trials"]) == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/dashboard" in output and "dashboard stopped" in output and "Traceback" not in output


def test_dashboard_without_a_study_says_what_to_run(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    output = invoke("dashboard", "--project", DIGITS, "--storage", f"sqlite:///{missing}", "--port", str(free_port()), code=2)
    assert f"no study storage at {missing}" in output and "trainwise tune" in output
    assert not missing.exists()  # nothing created behind the user's back


def test_dashboard_on_a_taken_port_names_it(tmp_path: Path) -> None:
    import socket

    storage = tmp_path / "studies.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{storage}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = invoke("dashboard", "--project", DIGITS, "--storage", f"sqlite:///{storage}", "--port", str(port), code=None)
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port" in output


def test_dashboard_on_an_unreachable_database_names_the_address() -> None:
    url = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    output = invoke("dashboard", "--project", DIGITS, "--storage", url, "--port", str(free_port()), code=2)
    assert "could not open the Optuna storage postgresql+psycopg2://postgres@127.0.0.1:1/nothing" in output
    assert "Traceback" not in output
