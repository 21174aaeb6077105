"""Tracking-server load: 1, 4 and 8 writer processes logging at once, side by side in one run.

Each writer is its own process (as tuning workers and DDP ranks are), opens a run through
trainwise's tracking path (`Tracker.run`, `StepRun.log_metrics`: one log_batch call per epoch-sized
batch of metrics) against a server started by trainwise (`LocalServer`: SQLite, one uvicorn
worker), and logs for a bounded number of calls or seconds, whichever ends first. Afterwards every
point is counted on the server. Prints, per writer count, the median and p95 milliseconds per call,
the calls per second the server took in all, and the points lost; asserts nothing.
Targets: 0 points lost; at 8 writers the median call within 3x the 1-writer median.

    .venv/bin/python bench/bench_server.py [--calls 200] [--seconds 30] [--metrics 8] [--rate 5]

--rate 0 logs back to back: the server's saturation point, not a training's load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def writer(url: str, project: str, index: int, args: tuple[int, float, int, float], start: Any, results: multiprocessing.Queue) -> None:  # noqa: PLR0917 - Process passes args positionally
    from trainwise.tracking import Tracker

    calls, seconds, metrics, rate = args
    tracker = Tracker(project, url)
    latencies = []
    with tracker.run("bench", run_name=f"writer {index}") as run:
        start.wait()  # every writer imported and connected: the logging overlaps fully
        began = time.time()
        deadline = time.monotonic() + seconds
        for step in range(calls):
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter()
            run.log_metrics({f"m{k}": step * 0.001 + k for k in range(metrics)}, step=step)
            latencies.append(time.perf_counter() - started)
            if rate > 0:  # paced like a training that logs every 1/rate seconds; 0: back to back (saturation)
                time.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        ended = time.time()
    results.put((run.run_id, len(latencies) * metrics, latencies, began, ended))


def measure(url: str, writers: int, args: argparse.Namespace) -> dict[str, float]:
    from mlflow import MlflowClient

    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate workers are
    results: multiprocessing.Queue = context.Queue()
    project = f"bench-server-{writers}"
    start = context.Barrier(writers)
    limits = (args.calls, args.seconds, args.metrics, args.rate)
    processes = [context.Process(target=writer, args=(url, project, i, limits, start, results)) for i in range(writers)]
    for process in processes:
        process.start()
    collected = [results.get(timeout=args.seconds + 300) for _ in processes]
    for process in processes:
        process.join()
    wall = max(row[4] for row in collected) - min(row[3] for row in collected)  # the logging window only
    client = MlflowClient(url)
    produced = sum(points for _, points, *_ in collected)
    found = sum(len(client.get_metric_history(run_id, f"m{k}")) for run_id, *_ in collected for k in range(args.metrics))
    latencies = sorted(latency for _, _, values, *_ in collected for latency in values)
    return {
        "median_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "calls_per_s": len(latencies) / wall,
        "produced": produced,
        "lost": produced - found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="log_batch calls per writer at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per writer at most")
    parser.add_argument("--metrics", type=int, default=8, help="metrics per call (an epoch's worth)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument(
        "--rate", type=float, default=5.0,
        help="calls per second per writer (a run logging every 200 ms, far more often than an epoch ends); 0: back to back",
    )  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TRAINWISE_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from trainwise.server import LocalServer

        server = LocalServer(Path(tmp) / "server", port=_free_port())
        url = server.start().url
        assert url is not None
        try:
            rows = {n: measure(url, n, args) for n in args.writers}
        finally:
            server.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; server: trainwise LocalServer (SQLite, 1 worker)")
    pace = f"{args.rate:g} calls/s" if args.rate > 0 else "back to back"
    print(f"each writer: up to {args.calls} calls or {args.seconds:.0f} s, {pace}, {args.metrics} metrics per call")
    for n, row in rows.items():
        print(
            f"{n} writer{'s' if n > 1 else ' '}: {row['median_ms']:6.1f} ms/call median, {row['p95_ms']:6.1f} ms p95, "
            f"{row['calls_per_s']:6.1f} calls/s in all, {row['lost']:.0f} of {row['produced']:.0f} points lost"
        )
    base, top = rows[min(rows)], rows[max(rows)]
    ratio = top["median_ms"] / base["median_ms"]
    lost = sum(row["lost"] for row in rows.values())
    verdict = "met" if lost == 0 and ratio <= 3 else "NOT met"
    print(f"{max(rows)}/{min(rows)} writers latency {ratio:.2f}x; points lost {lost:.0f} (targets 0 lost, <= 3x: {verdict})")


if __name__ == "__main__":
    main()
