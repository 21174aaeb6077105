"""The local tracking server's lifecycle, with real `mlflow server` processes on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from trainwise.errors import ServerError
from trainwise.server import LocalServer, _group_alive, _kill_group, ensure_tracking_uri, health

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path):
    srv = LocalServer(tmp_path / "home", port=free_port())
    yield srv
    srv.stop()


def test_start_status_idempotent_start_and_stop(server: LocalServer) -> None:
    assert not server.status().running

    first = server.start()
    assert first.running and first.healthy
    assert first.url == f"http://127.0.0.1:{server.port}"
    assert health(first.url)
    state = json.loads(server.pid_file.read_text())
    assert state["pid"] == first.pid
    assert state["backend_store_uri"].startswith("sqlite:///") and state["backend_store_uri"].endswith("mlflow.db")
    assert Path(state["artifacts_destination"]).is_dir()
    assert server.log_file.is_file()

    # The process carries the small-machine defaults.
    cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--workers") + 1] == b"1"
    assert b"--artifacts-destination" in cmdline
    environ = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
    assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ

    again = server.start()
    assert again.pid == first.pid  # reported, not started twice

    # status and stop need no port: they read the pid file.
    other_view = LocalServer(server.home)
    assert other_view.status().pid == first.pid
    assert other_view.stop() is True
    assert not _group_alive(first.pid)
    assert not server.pid_file.exists()
    assert not health(first.url, timeout=1)
    assert server.stop() is False


def fake_state(pid: int, port: int) -> dict[str, object]:
    """A pid file's content naming `pid`."""
    return {"pid": pid, "host": "127.0.0.1", "port": port, "backend_store_uri": "sqlite:///x", "artifacts_destination": "x", "log_file": "x"}


def test_stale_pid_file_is_detected_and_cleaned(server: LocalServer) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    server.pid_file.parent.mkdir(parents=True, exist_ok=True)
    server.pid_file.write_text(
        json.dumps(fake_state(dead.pid, server.port))
    )
    status = server.status()
    assert not status.running
    assert not server.pid_file.exists()
    assert server.start().running


def test_pid_recycled_by_another_program_is_not_mistaken_for_the_server(server: LocalServer) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        server.pid_file.parent.mkdir(parents=True, exist_ok=True)
        server.pid_file.write_text(
            json.dumps(fake_state(other.pid, server.port))
        )
        assert not server.status().running
    finally:
        other.kill()
        other.wait()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = LocalServer(tmp_path / "home", port=port)
        with pytest.raises(ServerError) as caught:
            server.start()
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert f"--port {port + 1}" in message
    assert not server.pid_file.exists()


def test_stop_ends_the_whole_process_group(server: LocalServer) -> None:
    status = server.start()
    assert status.pid is not None
    members = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == status.pid
    ]
    assert len(members) >= 2  # mlflow's CLI plus the uvicorn process it runs
    server.stop()
    assert all(not _alive(pid) for pid in members)


def test_a_step_with_no_tracking_uri_starts_and_then_reuses_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    home = tmp_path / "home"
    try:
        uri = ensure_tracking_uri(home, port)
        assert uri == f"http://127.0.0.1:{port}"
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        pid = LocalServer(home).status().pid
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert ensure_tracking_uri(home, port) == uri
        assert LocalServer(home).status().pid == pid
    finally:
        LocalServer(home).stop()


def test_cli_server_commands(tmp_path: Path) -> None:
    env = {**os.environ, "TRAINWISE_HOME": str(tmp_path / "home"), "TRAINWISE_PORT": str(free_port())}
    env.pop("MLFLOW_TRACKING_URI", None)

    def trainwise(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trainwise", "server", *args], env=env, capture_output=True, text=True, timeout=180)

    try:
        assert trainwise("status").returncode == 1
        started = trainwise("start")
        assert started.returncode == 0, started.stderr
        url = f"http://127.0.0.1:{env['TRAINWISE_PORT']}"
        assert url in started.stdout
        assert trainwise("ui-url").stdout.strip() == url
        status = trainwise("status")
        assert status.returncode == 0 and "healthy" in status.stdout
    finally:
        stopped = trainwise("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout


def test_two_starts_at_once_end_with_one_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "TRAINWISE_HOME": str(home), "TRAINWISE_PORT": str(free_port())}
    env.pop("MLFLOW_TRACKING_URI", None)
    # `python -m trainwise server start`, but each process finishes its imports and then waits for a
    # line on stdin, so the two are released together instead of one arriving seconds after the
    # other's server is up. The port check is made a second slower, as on a loaded machine, so
    # that the window between it and the pid file (a few ms otherwise) is hit every time.
    gated = (
        "import runpy, sys, time, trainwise.cli, trainwise.server as s; check = s._require_free_port; "
        "s._require_free_port = lambda *a: (time.sleep(1.0), check(*a))[1]; sys.stdin.readline(); "
        "sys.argv = ['trainwise', 'server', 'start']; runpy.run_module('trainwise', run_name='__main__')"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", gated], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for start in starts:
            assert start.stdin is not None
            start.stdin.write("go\n")
            start.stdin.flush()
        outputs = [start.communicate(timeout=180) for start in starts]
        assert [start.returncode for start in starts] == [0, 0], [err[-2000:] for _, err in outputs]
        url = f"http://127.0.0.1:{env['TRAINWISE_PORT']}"
        reported = [out.split("(pid ")[1].split(";")[0] for out, _ in outputs]
        assert all(url in out for out, _ in outputs)
        servers = _mlflow_servers_of(home)
        assert len(servers) == 1, servers
        assert reported == [str(servers[0])] * 2
        assert LocalServer(home).status().pid == servers[0]
    finally:
        for start in starts:
            if start.poll() is None:
                start.kill()
                start.communicate()
        LocalServer(home).stop()
        for pid in _mlflow_servers_of(home):  # what a lost race left running without a pid file
            _kill_group(pid, signal.SIGKILL)
    assert not _mlflow_servers_of(home)


def _mlflow_servers_of(home: Path) -> list[int]:
    """The `mlflow server` processes whose backend store lies under `home`."""
    store = f"sqlite:///{home.resolve()}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mlflow" in b" ".join(cmdline) and b"server" in cmdline and any(arg.startswith(store) for arg in cmdline):
                pids.append(int(entry.name))
    return sorted(pids)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_server_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    server = LocalServer(tmp_path / "home", port=free_port())
    server.dir.mkdir(parents=True)
    server.db_file.write_bytes(b"this is not a SQLite database" * 100)  # a corrupt backend store
    try:
        with pytest.raises(ServerError, match=r"(?s)exited with code \d+ while starting.*server\.log"):
            server.start(timeout=90)
        assert not server.pid_file.exists()
    finally:
        server.stop()


def _hold_connection(url: str) -> http.client.HTTPConnection:
    """A kept-alive connection to the server: when the server dies, its end of it lingers (TIME-WAIT)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/health")
    connection.getresponse().read()
    return connection


def test_a_crashed_servers_port_and_orphaned_worker_do_not_block_the_restart(server: LocalServer) -> None:
    # SIGKILL on `mlflow server` alone, as a crash or the OOM killer would: its uvicorn worker lives
    # on, orphaned, still listening on the port. The restart must recognise it by the pid file's
    # process group and replace it at once, not call the port "in use by another process".
    first = server.start()
    assert first.pid is not None
    orphans = [pid for pid in _members(first.pid) if pid != first.pid]
    assert orphans, "expected mlflow server to run uvicorn in a child process"
    connection = _hold_connection(first.url)
    os.kill(first.pid, signal.SIGKILL)
    while _alive(first.pid):  # the signal is delivered asynchronously
        time.sleep(0.05)
    connection.close()
    assert health(first.url), "the orphaned worker should still be serving: the restart must deal with it"
    again = server.start(timeout=60)
    assert again.running and again.healthy and again.pid != first.pid
    assert not any(_alive(pid) for pid in orphans)


def test_a_restart_right_after_a_crash_is_not_refused_for_time_wait_sockets(server: LocalServer) -> None:
    # The whole server killed with connections open: the kernel keeps the server's end of each in
    # TIME-WAIT for a minute. A port check without SO_REUSEADDR took that as another process.
    first = server.start()
    assert first.pid is not None
    connections = [_hold_connection(first.url) for _ in range(4)]  # one is enough; several make it certain
    _kill_group(first.pid, signal.SIGKILL)
    while _group_alive(first.pid):
        time.sleep(0.05)
    for connection in connections:
        connection.close()
    # The kernel moves the server's end to TIME-WAIT once the client's FIN arrives, but not every
    # time (about half the runs here): make sure of one the same way, a server end closed first.
    deadline = time.monotonic() + 2
    while not _time_wait_on(server.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _time_wait_on(server.port):
        _leave_time_wait(server.port)
    assert _time_wait_on(server.port), "the test needs a TIME-WAIT socket on the port to mean anything"
    assert server.start(timeout=60).healthy


def _members(pgid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == pgid and _alive(int(p.name))]


def _leave_time_wait(port: int) -> None:
    """A connection on 127.0.0.1:port whose server end closes first, so that end stays in TIME-WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)  # the server's FIN
        client.close()
    time.sleep(0.1)


def _time_wait_on(port: int) -> bool:
    """Whether /proc/net/tcp lists a TIME-WAIT (state 06) socket on local port `port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "06":
            return True
    return False
