"""Fixtures shared by the whole suite: a real `mlflow server` on loopback, temp homes, fresh projects.

Layered and cheap: one tracking server per test session (started like a user's, through
trainwise.server), a TRAINWISE_HOME per session so the digits folder is written once, and a unique
project name per test so runs and step caches of different tests never meet.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainwise.server import LocalServer

# A suite started in the background by a non-interactive shell (`cmd &` in a script) inherits
# SIGINT ignored, and so would every process it starts: the Ctrl-C tests then fail for a reason
# that is not trainwise's (the signal never arrives). A handler, unlike SIG_IGN, is reset to the
# default in each started program, so this gives them the SIGINT a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "projects" / "digits")

pytest_plugins = ["tests.browser"]  # the `browser` fixture (headless Chromium), for any test module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TRAINWISE_HOME for the session: data caches are written once, not per test."""
    home = tmp_path_factory.mktemp("trainwise-home")
    previous = os.environ.get("TRAINWISE_HOME")
    os.environ["TRAINWISE_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TRAINWISE_HOME", None)
    else:
        os.environ["TRAINWISE_HOME"] = previous


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory, session_home: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite + proxied artifacts) on a free loopback port; its URL."""
    server = LocalServer(tmp_path_factory.mktemp("mlflow-server"), port=free_port())
    status = server.start(timeout=120)
    assert status.url is not None
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = status.url
    yield status.url
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    server.stop()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A project name no other test uses: its own experiment and step cache."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def digits_pipeline(tracking_server: str) -> tuple[str, str]:
    """The whole default pipeline in tiny mode (`trainwise run --dry-run`), once per session: its
    project name and console output. For tests that only read what a full pipeline leaves."""
    from tests.helpers import invoke

    name = f"t-digits-pipeline-{uuid.uuid4().hex[:6]}"
    return name, invoke("run", "--project", DIGITS, "--set", f"name={name}", "--dry-run")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which no test passed or failed (nothing collected, everything skipped) is a failure."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or session.config.option.collectonly:
        return
    ran = len(reporter.stats.get("passed", [])) + len(reporter.stats.get("failed", []))
    if ran == 0 and exitstatus in (0, 5):
        reporter.write_line("error: no test ran (none collected, or all skipped or deselected)", red=True)
        session.exitstatus = 1
