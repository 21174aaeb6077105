"""What a run could not send while the tracking server was away, kept until it answers again.

MLflow's client retries a failed call for a while (MLFLOW_HTTP_REQUEST_MAX_RETRIES with backoff,
about two minutes by default) and then raises: an outage longer than that would kill the training
or lose its points. So a run's metrics, params and tags go through a Spool:
- while the server answers, each batch is sent as it comes;
- when a call fails and /health does not answer either, the batch is kept, in memory and appended
  to a spool file (`$TRAINWISE_HOME/spool/<run id>.jsonl`, at most TRAINWISE_SPOOL_MAX_MB), and so
  is every later batch, without waiting on the server again;
- every TRAINWISE_SPOOL_RETRY_S seconds the next batch first tries to send what is kept, in order,
  each batch once (a sent batch leaves the file before the next is tried);
- the run's end waits for the flush (up to TRAINWISE_FLUSH_TIMEOUT_S); if the server is still away
  then, the end status is written to the file too, and the next trainwise command on a machine
  that shares the spool folder sends the rest and ends the run (Tracker.flush_spools).
A failed call while /health answers is a real error (a bad value, a deleted run) and is raised.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from trainwise.server import health

log = logging.getLogger(__name__)

RETRY_ENV = "TRAINWISE_SPOOL_RETRY_S"
MAX_MB_ENV = "TRAINWISE_SPOOL_MAX_MB"
FLUSH_TIMEOUT_ENV = "TRAINWISE_FLUSH_TIMEOUT_S"


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, os.environ.get(name), default)
        return default
    return value if value > 0 else default


@dataclass
class Batch:
    """One log_batch call's worth of data, with the timestamps it was produced at."""

    metrics: list[Metric] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self.metrics],
            "params": [[p.key, p.value] for p in self.params],
            "tags": [[t.key, t.value] for t in self.tags],
        })  # fmt: skip

    @classmethod
    def from_json(cls, line: str) -> Batch:
        data = json.loads(line)
        return cls(
            [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in data.get("metrics", [])],
            [Param(k, v) for k, v in data.get("params", [])],
            [RunTag(k, v) for k, v in data.get("tags", [])],
        )

    @property
    def points(self) -> int:
        return len(self.metrics)


class Spool:
    """Sends one run's batches, keeping them through an outage of the tracking server."""

    def __init__(self, client: MlflowClient, run_id: str, tracking_uri: str, folder: Path) -> None:
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.path = folder / f"{run_id}.jsonl"
        self.pending: list[Batch] = []
        self.end_status: str | None = None
        self._away_since: float | None = None
        self._next_try = 0.0
        self._bytes = 0
        self._dropped = 0
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, client: MlflowClient, path: Path, tracking_uri: str) -> Spool:
        """A spool another process left behind: its batches, and the end status it could not send."""
        spool = cls(client, path.stem, tracking_uri, path.parent)
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a last line cut short by a kill mid-write: it was never complete
                log.warning("%s: line %d is incomplete and is skipped", path, number)
                continue
            if "end" in record:
                spool.end_status = record["end"]
            else:
                spool.pending.append(Batch.from_json(line))
        spool._away_since = time.monotonic()
        return spool

    @property
    def away(self) -> bool:
        return self._away_since is not None

    def send(self, batch: Batch) -> None:
        with self._lock:
            if self.away and time.monotonic() >= self._next_try:
                self._flush()
            if self.away:
                self._keep(batch)
                return
            try:
                self._post(batch)
            except MlflowException as exc:
                if _refused(exc) and health(self.tracking_uri, timeout=2.0):
                    raise  # the server answers and turned this call down (a bad value, a deleted run)
                self._went_away(exc)
                self._keep(batch)

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything kept, waiting up to `timeout` seconds for the server; True when nothing is left."""
        limit = _env_float(FLUSH_TIMEOUT_ENV, 600.0) if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            if not self.away:
                return True
            if limit > 0:
                log.warning(
                    "run %s: waiting up to %.0f s for the tracking server at %s to send %d kept batches",
                    self.run_id, limit, self.tracking_uri, len(self.pending),
                )  # fmt: skip
            while True:
                if self._flush():
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(self._retry_s(), max(0.0, deadline - time.monotonic())))

    def record_end(self, status: str) -> None:
        """The run's end status, for whoever sends the rest (the server is still away)."""
        with self._lock:
            self.end_status = status
            self._rewrite()

    # -- inside the lock ----------------------------------------------------------------------------

    def _post(self, batch: Batch) -> None:
        self.client.log_batch(self.run_id, metrics=batch.metrics, params=batch.params, tags=batch.tags)

    def _went_away(self, exc: MlflowException) -> None:
        self._away_since = time.monotonic()
        self._next_try = self._away_since + self._retry_s()
        log.warning(
            "the tracking server at %s does not answer (%s); run %s keeps its metrics in %s and sends them when it is back",
            self.tracking_uri, str(exc).splitlines()[0][:200], self.run_id, self.path,
        )  # fmt: skip

    def _keep(self, batch: Batch) -> None:
        line = batch.to_json() + "\n"
        if self._bytes + len(line) > _env_float(MAX_MB_ENV, 256.0) * 2**20:
            if not self._dropped:
                log.error("run %s: the spool %s is full (%s MB); later points are dropped and counted", self.run_id, self.path, MAX_MB_ENV)
            self._dropped += batch.points
            return
        self.pending.append(batch)
        self._bytes += len(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(line)

    def _flush(self) -> bool:
        """Send the kept batches in order; True when none is left (the server is back)."""
        if not health(self.tracking_uri, timeout=2.0):
            self._next_try = time.monotonic() + self._retry_s()
            return False
        sent = 0
        try:
            for batch in self.pending:
                self._post(batch)
                sent += 1
        except MlflowException as exc:
            if _refused(exc) and health(self.tracking_uri, timeout=2.0):
                raise
            log.debug("run %s: the server went away again after %d batches: %s", self.run_id, sent, exc)
        finally:
            points = sum(batch.points for batch in self.pending[:sent])
            del self.pending[:sent]
            self._rewrite()
        if self.pending:
            self._next_try = time.monotonic() + self._retry_s()
            return False
        if self._dropped:
            self.client.set_tag(self.run_id, "trainwise.points_dropped", str(self._dropped))
        away = time.monotonic() - (self._away_since or time.monotonic())
        log.warning("the tracking server at %s is back after %.0f s; run %s sent its %d kept points", self.tracking_uri, away, self.run_id, points)
        self._away_since = None
        return True

    def _rewrite(self) -> None:
        """The file holds exactly what is still to send (and the end status), so nothing is sent twice."""
        if not self.pending and self.end_status is None:
            self.path.unlink(missing_ok=True)
            self._bytes = 0
            return
        lines = [batch.to_json() + "\n" for batch in self.pending]
        if self.end_status is not None:
            lines.append(json.dumps({"end": self.end_status}) + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.path)
        self._bytes = sum(len(line) for line in lines)

    @staticmethod
    def _retry_s() -> float:
        return _env_float(RETRY_ENV, 5.0)


def _refused(exc: MlflowException) -> bool:
    """A 4xx answer (other than 429): the call itself is wrong, and sending it again will not help.
    Connection errors, timeouts, 5xx and 429 mean the server is away or overloaded: keep the batch."""
    code = exc.get_http_status_code()
    return 400 <= code < 500 and code != 429


def spool_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []

