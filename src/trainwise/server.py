"""The local MLflow tracking server: start, stop, status and health.

One `mlflow server` per TRAINWISE_HOME, bound to loopback, with a SQLite backend store and proxied
artifacts (`--artifacts-destination`) so clients never write to the artifact folder themselves.
It runs in its own process group (stop ends every worker it forked) and is described by a JSON
pid file that `status`/`stop` read, so they need no flags.

Defaults are tuned for small machines, measured:
- `--workers 1`: with several uvicorn workers each kept-alive request stalled about 40 ms
  (uvicorn issue #3149); synchronous logging measured 12 ms/call with 1 worker vs 66 ms with 4.
- `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: the job runner costs about 2 GB of RAM.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from trainwise.errors import ServerError
from trainwise.paths import make_dir, trainwise_home

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
ADMIN_USER = "admin"


@dataclass(frozen=True)
class ServerState:
    """What the pid file records about a server we started."""

    pid: int
    host: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    log_file: str
    auth: bool = False  # MLflow's basic-auth app: clients need credentials

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str | None = None
    pid: int | None = None
    healthy: bool = False
    log_file: str | None = None
    detail: str = ""


class LocalServer:
    """The `mlflow server` that trainwise keeps under one home folder."""

    def __init__(
        self,
        home: Path | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        workers: int = 1,
        enable_job_execution: bool = False,
        auth: bool = False,
        insecure: bool = False,
        allowed_hosts: str | None = None,
    ) -> None:
        self.home = (home or trainwise_home()).resolve()
        self.host = host
        self.port = port
        self.workers = workers
        self.enable_job_execution = enable_job_execution
        self.auth = auth
        self.insecure = insecure
        self.allowed_hosts = allowed_hosts
        self.dir = self.home / "mlflow"
        self.pid_file = self.dir / "server.json"
        self.lock_file = self.dir / "server.lock"
        self.log_file = self.dir / "server.log"
        self.db_file = self.dir / "mlflow.db"
        self.artifacts_dir = self.dir / "artifacts"
        self.auth_config = self.dir / "basic_auth.ini"
        self.credentials_file = self.dir / "admin-credentials.json"  # 0600: the owner's, never a client's

    # -- state -----------------------------------------------------------------------------------

    def _read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self.pid_file.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable pid file %s (%s)", self.pid_file, exc)
            return None

    def _live_state(self, *, clear_crashed: bool = False) -> ServerState | None:
        """The recorded server if its process is alive; a stale pid file is removed.

        A crashed server (its `mlflow server` process killed) can leave its uvicorn worker serving
        on the port, orphaned: it keeps the pid file's process group, which is how it is recognised.
        With `clear_crashed` (a start) those leftovers are stopped so the port frees at once; without
        it (status) the pid file stays, so a later start can still find them.
        """
        state = self._read_state()
        if state is None:
            return None
        if _process_alive(state.pid) and _is_mlflow_server(state.pid):
            return state
        leftovers = _mlflow_members(state.pid)
        if leftovers and not clear_crashed:
            return None
        if leftovers:
            log.warning(
                "the tracking server at %s crashed (process %d is gone) and left %s running; stopping them",
                state.url, state.pid, ", ".join(map(str, leftovers)),
            )  # fmt: skip
            _stop_group(state.pid, timeout=10.0)
        log.info("removing stale pid file %s (process %d is gone)", self.pid_file, state.pid)
        self.pid_file.unlink(missing_ok=True)
        return None

    def status(self) -> ServerStatus:
        state = self._live_state()
        if state is None:
            return ServerStatus(running=False, detail=f"no trainwise server for {self.home}")
        healthy = health(state.url)
        return ServerStatus(
            running=True,
            url=state.url,
            pid=state.pid,
            healthy=healthy,
            log_file=state.log_file,
            detail="healthy" if healthy else "process alive but /health does not answer",
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> ServerStatus:
        """Start the server, or report the one already running; waits until /health answers.

        Holds the home's start lock throughout: two starts at once (two terminals, two steps that
        both found no server) would otherwise both see a free port and no pid file, both spawn, and
        the loser's pid file would overwrite the winner's. The second start waits, then finds the
        first one's server.
        """
        make_dir(self.dir)
        with _exclusive(self.lock_file):
            return self._start(timeout)

    def _start(self, timeout: float) -> ServerStatus:
        state = self._live_state(clear_crashed=True)
        if state is not None and self.auth and not state.auth:
            raise ServerError(
                f"the trainwise server at {state.url} (pid {state.pid}) runs without --auth; "
                "stop it (`trainwise server stop`) and start it again with --auth"
            )
        if state is not None:
            if not wait_healthy(state.url, timeout):
                raise ServerError(
                    f"the trainwise server (pid {state.pid}) at {state.url} is running but /health does not answer "
                    f"after {timeout:.0f}s; see {state.log_file}, or restart it with `trainwise server stop` then `start`"
                )
            log.info("tracking server already running at %s (pid %d)", state.url, state.pid)
            return self.status()

        if not self.auth and not self.insecure and not _is_loopback(self.host):
            raise ServerError(
                f"--host {self.host} would let anyone who reaches this machine read and change every run and model. "
                "Add --auth (MLflow's basic-auth: users, passwords and permissions), or say --insecure if the network "
                "is yours alone"
            )
        _require_free_port(self.host, self.port)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        backend = f"sqlite:///{self.db_file}"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host,
            "--port", str(self.port),
            "--backend-store-uri", backend,
            "--artifacts-destination", str(self.artifacts_dir),
            "--workers", str(self.workers),
        ]  # fmt: skip
        if self.allowed_hosts:
            command += ["--allowed-hosts", self.allowed_hosts]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(self.enable_job_execution).lower()}
        env.pop(TRACKING_URI_ENV, None)
        if self.auth:
            command += ["--app-name", "basic-auth"]
            env.update(self._auth_env())
            self.dir.chmod(0o700)  # the user store (basic_auth.db) and the run database: this user's only
        with self.log_file.open("ab") as log_stream:
            # start_new_session: its own process group, so stop() reaches uvicorn's workers too,
            # and a Ctrl-C in the user's terminal does not take the server down with the step.
            # Popen's default close_fds keeps the lock file's descriptor out of the server, so the
            # lock ends with this start, not with the server.
            process = subprocess.Popen(
                command, stdout=log_stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        state = ServerState(process.pid, self.host, self.port, backend, str(self.artifacts_dir), str(self.log_file), self.auth)
        _write_atomic(self.pid_file, json.dumps(asdict(state), indent=2))
        log.info("starting MLflow tracking server at %s (pid %d, log %s)", state.url, process.pid, self.log_file)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServerError(
                    f"mlflow server exited with code {process.returncode} while starting on {state.url}; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            if health(state.url, timeout=1.0):
                return self.status()
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"mlflow server did not answer {state.url}/health within {timeout:.0f}s; "
            f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the whole process group and wait for it; False when none was running."""
        state = self._live_state()
        if state is None:
            self._live_state(clear_crashed=True)  # a crashed server's orphaned workers go too
            return False
        _stop_group(state.pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        log.info("stopped tracking server at %s", state.url)
        return True

    # -- authentication ------------------------------------------------------------------------------

    def admin_credentials(self) -> tuple[str, str] | None:
        """The admin user and password made on the first `--auth` start, None before one."""
        try:
            data = json.loads(self.credentials_file.read_text())
        except (OSError, ValueError):
            return None
        return data["username"], data["password"]

    def _auth_env(self) -> dict[str, str]:
        """MLflow's basic-auth app configured under this home: its user store, the admin, a session key.

        The admin password is generated once and kept, readable only by this user, in
        `credentials_file`; MLflow uses it only to create the admin on its first start.
        """
        if (credentials := self.admin_credentials()) is None:
            credentials = (ADMIN_USER, secrets.token_urlsafe(18))
            _write_private(self.credentials_file, json.dumps({"username": credentials[0], "password": credentials[1],
                                                             "secret_key": secrets.token_hex(32)}, indent=2))  # fmt: skip
        secret = json.loads(self.credentials_file.read_text()).get("secret_key") or secrets.token_hex(32)
        _write_private(
            self.auth_config,
            "[mlflow]\n"
            "default_permission = READ\n"  # users see runs; only owners and those granted more change them
            f"database_uri = sqlite:///{self.dir / 'basic_auth.db'}\n"
            f"admin_username = {credentials[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        )
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": credentials[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret,
        }

    def ui_url(self) -> str:
        state = self._live_state()
        return state.url if state else f"http://{self.host}:{self.port}"


# -- the tracking URI every step uses -------------------------------------------------------------


def ensure_tracking_uri(home: Path | None = None, port: int | None = None) -> str:
    """`$MLFLOW_TRACKING_URI` when set; otherwise start (or reuse) the local server and point at it.

    The chosen URI is exported so child processes (an `mlflow run`, a DataLoader worker) agree.
    """
    uri = os.environ.get(TRACKING_URI_ENV)
    if uri:
        return uri
    server = LocalServer(home, port=port or int(os.environ.get("TRAINWISE_PORT", DEFAULT_PORT)))
    status = server.start()
    assert status.url is not None
    os.environ[TRACKING_URI_ENV] = status.url
    state = server._live_state()
    if state is not None and state.auth and USERNAME_ENV not in os.environ and (credentials := server.admin_credentials()):
        # The server this user started with --auth: its admin credentials are theirs (the file is 0600).
        os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = credentials
    return status.url


def health(url: str, timeout: float = 3.0) -> bool:
    """True when `<url>/health` answers 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if health(url, timeout=1.0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


# -- process helpers ------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _write_private(path: Path, text: str) -> None:
    """Written readable by this user only (0600) from the first byte, then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
    tmp.replace(path)


def _require_free_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: the connections of a server that just stopped or crashed linger in
        # TIME-WAIT for a minute, and without SO_REUSEADDR they would look like another process.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            pass
        else:
            return
    other = f"http://{host}:{port}"
    mlflow_hint = (
        f" An MLflow server answers there: to use it, set MLFLOW_TRACKING_URI={other}." if health(other, timeout=1.0) else ""
    )
    raise ServerError(
        f"port {port} on {host} is already in use by another process.{mlflow_hint} "
        f"Pick another port with `trainwise server start --port {port + 1}` (or TRAINWISE_PORT={port + 1})."
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_mlflow_server(pid: int) -> bool:
    """Guards against a recycled pid: the process must still be an mlflow server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"mlflow" in b" ".join(cmdline) and b"server" in cmdline


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain in the group; check the leader's state as well.
    return _process_alive(pgid) or _group_has_live_members(pgid)


def _group_has_live_members(pgid: int) -> bool:
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _mlflow_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` that run MLflow (a crashed server's orphaned workers)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z" and b"mlflow" in (entry / "cmdline").read_bytes():
                members.append(int(entry.name))
    return sorted(members)


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM the whole group, SIGKILL after `timeout`, and wait until none of it is left."""
    _kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        log.warning("server process group %d ignored SIGTERM for %.0fs; sending SIGKILL", pgid, timeout)
        _kill_group(pgid, signal.SIGKILL)
        while _group_alive(pgid):
            time.sleep(0.05)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` for the block, across processes.

    The kernel releases it when the holder exits, even on SIGKILL, so a crashed start leaves no
    stale lock behind (which a lock made of a created file would).
    """
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is starting the tracking server (%s is locked); waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
