"""optuna-dashboard on a project's study storage (the `dashboard` extra): the same storage `tune` writes."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from trainwise.errors import ConfigError, TrainwiseError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'trainwise[dashboard]' (or pip install optuna-dashboard)"


class DashboardError(TrainwiseError):
    """The dashboard cannot start: the extra is missing, the port is taken, or there is no study yet."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite:/// URL (None for other storages)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])  # sqlite:////abs/file.db or sqlite:///relative.db


def serve(storage_url: str, *, host: str, port: int, open_storage: Callable[[str], Any] = lambda url: url) -> None:
    """Serve optuna-dashboard on `storage_url` until SIGINT or SIGTERM, then stop cleanly (its page: `page_url`).

    optuna-dashboard's own `run_server` runs bottle's single-threaded server in the main thread: a
    signal raised there lands inside whatever request is being written and wsgiref swallows it, so
    the server runs on. Here its WSGI app is served from a thread pool of wsgiref's (each request
    its own daemon thread) while the main thread only waits for the signal, then shuts the server down.
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise DashboardError(f"optuna-dashboard is not installed: {INSTALL_HINT}") from None
    database = sqlite_file(storage_url) or (Path(storage_url).expanduser() if "://" not in storage_url else None)
    if database is not None and not database.is_file():
        # optuna-dashboard would create an empty database there and show nothing: say why instead
        raise ConfigError(f"no study storage at {database}: run `trainwise tune` for this project first, or pass --storage URL")
    app = optuna_dashboard.wsgi(open_storage(storage_url))  # open_storage: tune's, whose errors name the address
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port") from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5) and thread.is_alive():
            pass
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not stop.is_set():
        raise DashboardError(f"the dashboard's server on {host}:{port} stopped by itself; see the log above")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open request never keeps the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("dashboard: " + format, *args)


def page_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/dashboard"
