"""tracking.py against a real server: run end states, joining, tags, paged search, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port
from trainwise.errors import Terminated, TrackingError
from trainwise.tracking import JOIN_RUN_ENV, TAG_ERROR, TAG_PARENT, TAG_PROJECT, TAG_STEP, TAG_VERSIONS, Tracker

REPO = Path(__file__).resolve().parents[2]


def test_a_run_that_returns_ends_finished_with_its_tags(tracking_server: str, unique_name: str) -> None:
    tracker = Tracker(unique_name, tracking_server)
    with tracker.run("understand", tags={"extra": "x"}) as run:
        run.log_params({"a.b": "1", "c": [1, 2]})
        run.log_metrics({"m1": 0.5, "m2": 2}, step=3)
        run.log_text("hello", "notes/hello.txt")
    stored = MlflowClient(tracking_server).get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.experiment_id == tracker.experiment_id
    assert stored.info.run_name == "understand"
    tags = stored.data.tags
    assert tags[TAG_PROJECT] == unique_name and tags[TAG_STEP] == "understand" and tags["extra"] == "x"
    assert '"mlflow"' in tags[TAG_VERSIONS] and '"torch"' in tags[TAG_VERSIONS]
    assert stored.data.params == {"a.b": "1", "c": "[1,2]"}
    assert stored.data.metrics == {"m1": 0.5, "m2": 2.0}
    assert run.url == f"{tracking_server}/#/experiments/{tracker.experiment_id}/runs/{run.run_id}?workflowType=machine_learning"
    assert [a.path for a in MlflowClient(tracking_server).list_artifacts(run.run_id, "notes")] == ["notes/hello.txt"]


def test_a_run_that_raises_ends_failed_with_the_error(tracking_server: str, unique_name: str) -> None:
    tracker = Tracker(unique_name, tracking_server)
    with pytest.raises(ValueError, match="bad column"), tracker.run("ingest") as run:
        raise ValueError("bad column 'x'")
    stored = MlflowClient(tracking_server).get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags[TAG_ERROR] == "ValueError: bad column 'x'"
    error_file = MlflowClient(tracking_server).download_artifacts(run.run_id, "error.txt")
    assert "Traceback" in Path(error_file).read_text()


def test_terminated_and_ctrl_c_end_killed(tracking_server: str, unique_name: str) -> None:
    tracker = Tracker(unique_name, tracking_server)
    for exc in (Terminated("SIGTERM"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), tracker.run("train") as run:
            raise exc
        assert MlflowClient(tracking_server).get_run(run.run_id).info.status == "KILLED"


def test_child_runs_have_an_explicit_parent(tracking_server: str, unique_name: str) -> None:
    tracker = Tracker(unique_name, tracking_server)
    with tracker.run("main") as parent, tracker.run("understand", parent=parent) as child:
        pass
    stored = MlflowClient(tracking_server).get_run(child.run_id)
    assert stored.data.tags[TAG_PARENT] == parent.run_id
    assert stored.info.experiment_id == parent.experiment_id


def test_joins_the_run_mlflow_run_created(tracking_server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_server)
    tracker = Tracker(unique_name, tracking_server)
    created = client.create_run(tracker.experiment_id)
    monkeypatch.setenv(JOIN_RUN_ENV, created.info.run_id)
    with tracker.run("understand") as run:
        assert JOIN_RUN_ENV not in os.environ  # consumed: nothing below joins it again
        with tracker.run("nested", parent=run) as child:
            pass
    assert run.run_id == created.info.run_id
    assert child.run_id != created.info.run_id
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.tags[TAG_STEP] == "understand"
    assert len(client.search_runs([tracker.experiment_id])) == 2


def test_joining_a_finished_run_is_refused(tracking_server: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_server)
    tracker = Tracker(unique_name, tracking_server)
    created = client.create_run(tracker.experiment_id)
    client.set_terminated(created.info.run_id, "FINISHED")
    monkeypatch.setenv(JOIN_RUN_ENV, created.info.run_id)
    with pytest.raises(TrackingError, match="is FINISHED, not RUNNING"), tracker.run("understand"):
        pass


def test_search_pages_through_every_result(tracking_server: str, unique_name: str) -> None:
    tracker = Tracker(unique_name, tracking_server)
    ids = []
    for _ in range(5):
        with tracker.run("sample", tags={"trainwise.cache_key": "same"}) as run:
            ids.append(run.run_id)
    found = [r.info.run_id for r in tracker.search({TAG_STEP: "sample"}, page_size=2)]
    assert found == list(reversed(ids))  # newest first, all three pages
    assert tracker.find_cached("sample", "same").info.run_id == ids[-1]
    assert tracker.find_cached("sample", "other") is None
    assert tracker.find_cached("sample", "same'; drop") is None  # quoting holds


def test_unreachable_server_names_the_address() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"{address} does not answer.*trainwise server start"):
        Tracker("x", address)
    assert time.monotonic() - started < 30  # no minutes of HTTP retries


def test_a_bare_file_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="bare file store"):
        Tracker("x", str(tmp_path / "mlruns"))


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from trainwise.signals import sigterm_raises
    from trainwise.tracking import Tracker

    project, uri, ready = sys.argv[1:]
    with sigterm_raises():
        with Tracker(project, uri).run("train") as run:
            Path(ready).write_text(run.run_id)
            threading.Event().wait(120)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_step_process_sent_a_signal_ends_killed(tracking_server: str, unique_name: str, tmp_path: Path, sig: signal.Signals) -> None:
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, unique_name, tracking_server, str(ready)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the step never started"
    process.send_signal(sig)
    assert process.wait(timeout=60) != 0
    assert MlflowClient(tracking_server).get_run(ready.read_text()).info.status == "KILLED"
