"""Faults injected for real (issue 12): processes killed outright, with a real tracking server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import free_port
from tests.helpers import invoke, step_runs
from trainwise.server import LocalServer
from trainwise.tracking import Tracker
from trainwise.tracking.liveness import TAG_HEARTBEAT, TAG_OWNER_PID, TAG_SUSPECT, Owner

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow


@pytest.fixture
def own_server(tmp_path: Path, tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    """A server of the test's own, to stop and start; the session's server is the global URI again afterwards."""
    server = LocalServer(tmp_path / "home", port=free_port())
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)  # restored after; Tracker() exports its own URI
    yield server
    server.stop()
    mlflow.set_tracking_uri(tracking_server)


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
    assert tracker.end_orphaned_runs() == []  # first look: noted, not ended (the server itself may have been away)
    assert client.get_run(silent).data.tags[TAG_SUSPECT].startswith(client.get_run(silent).data.tags[TAG_HEARTBEAT] + "@")
    client.set_tag(silent, TAG_SUSPECT, f"{client.get_run(silent).data.tags[TAG_HEARTBEAT]}@{time.time() - 3600:.0f}")
    assert tracker.end_orphaned_runs() == [silent]  # still silent long after the first look
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


def test_resume_continues_the_run_with_the_same_inputs_not_the_newest_one(
    tracking_server: str, unique_name: str, session_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trainwise.steps.runner import _interrupted_run, checkpoint_dir

    tracker = Tracker(unique_name, tracking_server)
    client = MlflowClient(tracking_server)

    def interrupted(key: str) -> str:
        run_id = client.create_run(tracker.experiment_id).info.run_id
        for tag, value in {"trainwise.project": unique_name, "trainwise.step": "train", "trainwise.cache_key": key}.items():
            client.set_tag(run_id, tag, value)
        client.set_terminated(run_id, "KILLED")
        checkpoint_dir(run_id).mkdir(parents=True)
        (checkpoint_dir(run_id) / "last.pt").write_bytes(b"checkpoint")
        return run_id

    ours = interrupted("key-of-this-command")
    interrupted("key-of-another-config")  # newer, interrupted too: not the one being repeated
    with caplog.at_level("INFO", logger="trainwise.steps.runner"):
        assert _interrupted_run(tracker, "train", "key-of-this-command") == ours
    assert f"continuing train run {ours} (KILLED" in caplog.text


def test_a_trainwise_home_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "TRAINWISE_HOME": str(blocker / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for command in (["status", "--project", DIGITS], ["server", "start"]):
        done = subprocess.run([sys.executable, "-m", "trainwise", *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert f"TRAINWISE_HOME={blocker / 'home'}" in done.stderr and "Not a directory" in done.stderr


def test_rows_without_a_target_are_a_console_warning_naming_the_list(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame.loc[[3, 7], "target"] = None
    (tmp_path / "data.csv").write_text(frame.to_csv(index=False))
    (tmp_path / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: tabular_classification, target: target}}\ndata: {{source: {{kind: tabular, path: data.csv}}}}\n"
    )
    output = invoke("ingest", "--project", str(tmp_path))
    assert "2 of 178 rows have no 'target' and are left out" in output and "rows_without_target.csv" in output
    (ingest,) = step_runs(tracking_server, unique_name, "ingest")
    listed = MlflowClient(tracking_server).download_artifacts(ingest.info.run_id, "rows_without_target.csv", str(tmp_path))
    assert len(Path(listed).read_text().splitlines()) == 3  # a header and the two rows
    # The "run this next" hint names the project as the user gave it, not the default digits one.
    assert f"next: trainwise understand --project {tmp_path}" in invoke("status", "--project", str(tmp_path))


def outage_tracker(server: LocalServer, name: str, monkeypatch: pytest.MonkeyPatch, **settings: str) -> tuple[str, Tracker]:
    """A tracker on `server` with the client's retry budget cut down (2 s timeout plus `settings`)."""
    for key, value in {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", **settings}.items():
        monkeypatch.setenv(key, value)
    url = server.status().url
    assert url is not None
    return url, Tracker(name, url)


def test_an_outage_longer_than_the_clients_retries_loses_no_point(
    own_server: LocalServer, unique_name: str, monkeypatch: pytest.MonkeyPatch, session_home: Path
) -> None:
    # The client's own retry budget made small (1 retry, no backoff, 2 s timeout): the outage below
    # (the server stopped for 8 s) outlasts it several times over, as 2.5 minutes outlast the default.
    server = own_server
    url, tracker = outage_tracker(server, unique_name, monkeypatch, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                                  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0", TRAINWISE_SPOOL_RETRY_S="0.5")  # fmt: skip
    produced: list[tuple[int, float]] = []

    def log_for(seconds: float, run: object) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            step = len(produced)
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)  # type: ignore[attr-defined]
            produced.append((step, 1.0 / (step + 1)))
            time.sleep(0.1)

    with tracker.run("train") as run:
        log_for(1.0, run)
        server.stop()
        log_for(8.0, run)  # the server is away
        assert run.spool is not None and run.spool.away and run.spool.path.is_file()
        server.start()
        log_for(2.0, run)
    client = MlflowClient(url)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "loss"))
    assert history == produced  # every point, once
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not run.spool.path.exists()


def test_a_run_that_ends_during_the_outage_is_flushed_and_ended_by_the_next_command(
    own_server: LocalServer, unique_name: str, monkeypatch: pytest.MonkeyPatch, session_home: Path
) -> None:
    server = own_server
    url, tracker = outage_tracker(server, unique_name, monkeypatch, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                                  TRAINWISE_SPOOL_RETRY_S="0.2", TRAINWISE_FLUSH_TIMEOUT_S="1")  # fmt: skip
    with tracker.run("train") as run:
        run.log_metrics({"loss": 1.0}, step=0)
        server.stop()
        run.log_metrics({"loss": 0.5}, step=1)
    assert run.spool is not None and run.spool.path.is_file()  # kept, with its end status
    server.start()
    # The run's owner is this live process, so flush_spools would leave the spool to it. A later
    # command sees an owner that has exited: the owner tag is pointed at one.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    MlflowClient(url).set_tag(run.run_id, TAG_OWNER_PID, str(ended.pid))
    assert Tracker(unique_name, url).flush_spools() == [run.run_id]
    client = MlflowClient(url)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")) == [(0, 1.0), (1, 0.5)]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not run.spool.path.exists()


def busy(server: str, name: str, step: str) -> bool:
    """`step` is running and into its work: an epoch logged (train), a trial started (tune)."""
    runs = step_runs(server, name, step)
    if not runs or runs[0].info.status != "RUNNING":
        return False
    if step == "tune":
        return bool(step_runs(server, name, "trial"))
    return bool(MlflowClient(server).get_metric_history(runs[0].info.run_id, "val_loss"))


@pytest.mark.parametrize(("sig", "step", "code"), [(signal.SIGINT, "tune", 130), (signal.SIGTERM, "train", 143)])
def test_a_stopped_pipeline_exits_promptly_with_its_runs_ended(
    tracking_server: str, unique_name: str, session_home: Path, tmp_path: Path, *, sig: signal.Signals, step: str, code: int
) -> None:
    # SIGINT goes to the whole process group, as Ctrl-C in a terminal sends it.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server, "TRAINWISE_HOME": str(session_home)}
    settings = f"name={unique_name} train.epochs=40 tune.epochs=40 checks.learning_curve_fractions=[]"
    with (tmp_path / "run.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainwise", "run", "--project", DIGITS, "--set", settings, "--dry-run"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    client = MlflowClient(tracking_server)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not busy(tracking_server, unique_name, step):
        time.sleep(0.3)
    assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    children = psutil.Process(process.pid).children(recursive=True)
    stopped_at = time.monotonic()
    os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)
    assert process.wait(timeout=30) == code
    took = time.monotonic() - stopped_at
    output = (tmp_path / "run.log").read_text()
    assert took < 10, f"exited {took:.1f} s after {sig.name}"
    assert "Traceback" not in output, output[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    experiment = client.get_experiment_by_name(unique_name)
    assert experiment is not None
    left = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert left == [], [(r.data.tags.get("trainwise.step"), r.info.run_id) for r in left]
    assert {r.info.status for r in step_runs(tracking_server, unique_name, step)} == {"KILLED"}


def test_a_spool_that_cannot_be_sent_is_set_aside_not_a_crash_of_every_command(
    tracking_server: str, unique_name: str, session_home: Path
) -> None:
    from trainwise.tracking.runs import spool_dir

    tracker = Tracker(unique_name, tracking_server)
    client = MlflowClient(tracking_server)
    cut_short = client.create_run(tracker.experiment_id).info.run_id
    client.set_terminated(cut_short, "KILLED")
    deleted = client.create_run(tracker.experiment_id).info.run_id
    client.set_terminated(deleted, "KILLED")
    client.delete_run(deleted)  # deleted in the UI while its points waited: the server refuses them
    spool_dir().mkdir(parents=True, exist_ok=True)
    batch = '{"metrics": [["loss", 0.5, 1000, 1]], "params": [], "tags": []}\n'
    (spool_dir() / f"{cut_short}.jsonl").write_text(batch + '{"metrics": [["loss", 0.4')  # killed mid-write
    (spool_dir() / f"{deleted}.jsonl").write_text(batch)

    flushed = tracker.flush_spools()
    assert cut_short in flushed and deleted not in flushed
    assert [(m.step, m.value) for m in client.get_metric_history(cut_short, "loss")] == [(1, 0.5)]  # the whole line
    assert (spool_dir() / "bad" / f"{deleted}.jsonl").is_file() and not (spool_dir() / f"{deleted}.jsonl").exists()
    assert deleted not in tracker.flush_spools()  # set aside: not tried again by every command
