"""Who owns a RUNNING run, its heartbeat, and ending the runs whose owner is gone.

A process killed outright (SIGKILL, the OOM killer, a lost machine) cannot end its own MLflow run,
which then shows RUNNING forever. So every run trainwise opens is tagged with its owner (host,
boot, pid and the process's start time, which tells a recycled pid apart), and a thread of the
owning process refreshes a heartbeat tag while the run is open. Any trainwise command on the
project ends the runs whose owner is gone as FAILED, with the reason:
- on this host (same hostname and boot): the owner's pid is dead or belongs to another process;
- elsewhere (another host, boot, container or pid namespace): its heartbeat is older than
  TRAINWISE_HEARTBEAT_TIMEOUT_S (default 300 s) and still unchanged two heartbeat intervals after
  a reaper first noted it, since a heartbeat also goes stale while the server itself was away.

Tracking stays in this package: the heartbeat only needs a client and run ids.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil
from mlflow import MlflowClient
from mlflow.entities import RunTag

log = logging.getLogger(__name__)

TAG_OWNER_HOST = "trainwise.owner.host"
TAG_OWNER_BOOT = "trainwise.owner.boot"
TAG_OWNER_PID = "trainwise.owner.pid"
TAG_OWNER_STARTED = "trainwise.owner.started"  # the process's start time (unix s): a recycled pid has another
TAG_HEARTBEAT = "trainwise.heartbeat"  # unix seconds of the owner's last beat
TAG_OWNER_PIDNS = "trainwise.owner.pidns"  # the pid namespace: containers share hostname and boot, not pids
TAG_SUSPECT = "trainwise.heartbeat_suspect"  # "<heartbeat seen>@<when>", set by a reaper before it ends a remote run
HEARTBEAT_ENV = "TRAINWISE_HEARTBEAT_S"
TIMEOUT_ENV = "TRAINWISE_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_TIMEOUT_S = 300.0  # ten missed beats: a server outage of a few minutes must not end live runs


def heartbeat_interval() -> float:
    return _seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S)


def heartbeat_timeout() -> float:
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", name, text, default)
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class Owner:
    host: str
    boot: str
    pid: int
    started: float
    pidns: str = ""

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), _boot_id(), os.getpid(), _started(os.getpid()) or time.time(), _pid_namespace())

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Owner | None:
        """The owner recorded on a run; None for runs trainwise did not open (or opened before owners were kept)."""
        try:
            return cls(
                tags[TAG_OWNER_HOST], tags.get(TAG_OWNER_BOOT, ""), int(tags[TAG_OWNER_PID]), float(tags[TAG_OWNER_STARTED]),
                tags.get(TAG_OWNER_PIDNS, ""),
            )  # fmt: skip
        except (KeyError, ValueError):
            return None

    def tags(self) -> dict[str, str]:
        return {
            TAG_OWNER_HOST: self.host,
            TAG_OWNER_BOOT: self.boot,
            TAG_OWNER_PID: str(self.pid),
            TAG_OWNER_STARTED: f"{self.started:.2f}",
            TAG_OWNER_PIDNS: self.pidns,
            TAG_HEARTBEAT: f"{time.time():.0f}",
        }

    def same_process_space(self, other: Owner) -> bool:
        """Whether a pid of `other` means the same process here: same host, boot and pid namespace."""
        return self.host == other.host and bool(self.boot) and self.boot == other.boot and self.pidns == other.pidns


def is_remote(tags: Mapping[str, str]) -> bool:
    """Whether the run's owner can be judged only by its heartbeat (another machine, container or pid namespace)."""
    owner = Owner.from_tags(tags)
    return owner is not None and not owner.same_process_space(Owner.this_process())


def suspect_mark(tags: Mapping[str, str]) -> str:
    return f"{tags.get(TAG_HEARTBEAT, '')}@{time.time():.0f}"


def confirmed_silent(tags: Mapping[str, str], *, now: float | None = None) -> bool:
    """True when a reaper marked the run suspect at least two heartbeat intervals ago and no beat came since."""
    seen, _, marked = tags.get(TAG_SUSPECT, "").rpartition("@")
    try:
        since = (time.time() if now is None else now) - float(marked)
    except ValueError:
        return False
    return seen == tags.get(TAG_HEARTBEAT, "") and since >= 2 * heartbeat_interval()


def owner_gone(tags: Mapping[str, str], *, now: float | None = None, timeout: float | None = None) -> str | None:
    """Why the process that owns this RUNNING run can no longer end it, or None while it may still be alive."""
    owner = Owner.from_tags(tags)
    if owner is None:
        return None
    me = Owner.this_process()
    where = f"pid {owner.pid} on {owner.host}"
    if owner.same_process_space(me):
        return _gone_here(owner, where)
    now = time.time() if now is None else now
    limit = heartbeat_timeout() if timeout is None else timeout
    try:
        last = float(tags.get(TAG_HEARTBEAT) or owner.started)
    except ValueError:
        last = owner.started
    if now - last > limit:
        return (
            f"no heartbeat from its process ({where}) for {now - last:.0f} s (limit {limit:.0f} s, "
            f"{TIMEOUT_ENV}): the process or its machine is gone"
        )
    return None


def _started(pid: int) -> float | None:
    """The start time of a live process of ours, None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _gone_here(owner: Owner, where: str) -> str | None:
    """Why a process on this machine is gone, or None while it lives."""
    try:
        process = psutil.Process(owner.pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # exited; its parent has not reaped it yet
            raise psutil.NoSuchProcess(owner.pid)
        if abs(process.create_time() - owner.started) > 1.0:
            return f"its process ({where}) is gone: that pid now belongs to another process"
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return f"its process ({where}) is gone: it was killed (SIGKILL, out of memory) before it could end its run"
    except psutil.AccessDenied:  # another user's live process: not ours to judge
        return None
    return None


@cache
def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # no /proc (macOS): one namespace
        return ""


@cache
def _boot_id() -> str:
    """This boot of this machine: a pid from before a reboot names nothing now."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"{psutil.boot_time():.0f}"


class Heartbeat:
    """One thread per process that refreshes TAG_HEARTBEAT on every run this process has open.

    A beat that cannot reach the server is skipped, not queued: the next one says the same, later.
    """

    def __init__(self) -> None:
        self._runs: dict[str, MlflowClient] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, client: MlflowClient, run_id: str) -> None:
        with self._lock:
            self._runs[run_id] = client
            self._wake.set()  # beat now, and take up a changed TRAINWISE_HEARTBEAT_S from here on
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="trainwise-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def _loop(self) -> None:
        while True:
            self._wake.wait(heartbeat_interval())
            self._wake.clear()
            with self._lock:
                runs = list(self._runs.items())
            if not runs:
                with self._lock:
                    if not self._runs:
                        self._thread = None
                        return
                continue
            beat = [RunTag(TAG_HEARTBEAT, f"{time.time():.0f}")]
            for run_id, client in runs:
                try:
                    client.log_batch(run_id, tags=beat)
                except Exception as exc:  # noqa: BLE001 - the server is away: the next beat tries again
                    log.debug("heartbeat for run %s not sent: %s", run_id, exc)


HEARTBEAT = Heartbeat()
