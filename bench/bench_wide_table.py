"""Wide-table benchmark: wall time of `trainwise explore` and `trainwise sample` on a 990-row,
192-feature classification table (issue 10 §4: both together within 20 s on 2 cores).

    .venv/bin/python bench/bench_wide_table.py [--rows 990] [--features 192]

The table is scikit-learn's make_classification (informative, redundant and noise features, three
classes), written as a CSV with a project.yaml beside it. A real `mlflow server` is started on a
free loopback port under a temporary home, exactly as a user's first step would; ingest runs first
and is not timed. Each timed step is the `trainwise` command in its own process, so the time is
what a user waits (interpreter start and imports included). Prints timings; asserts nothing.

Measured on 2 shared x86_64 cores, one run each (explore + sample):
- before (commit 6958617): explore 15.5 s with 92 pandas PerformanceWarnings, sample 31.3 s
  (193 check rows, 193 PNGs), 46.8 s; again at load average 0.5: 11.6 s + 28.0 s = 39.6 s.
- after (one drift row and figure, top-ranked features drawn once, no torch import): 7.2 s +
  6.2 s = 13.3 s on a busier machine; at load average 0.5: 5.7-5.9 s + 3.7 s = 9.4-9.6 s (2 runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_project(folder: Path, rows: int, features: int, *, seed: int = 0) -> Path:
    """A CSV of `rows` x `features` numbers plus a `label` column, and its project.yaml; the project folder."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=features, n_informative=min(12, features), n_redundant=min(8, features // 4),
        n_classes=3, random_state=seed,
    )  # fmt: skip
    frame = pd.DataFrame(x, columns=[f"f{i:03d}" for i in range(features)])
    frame["label"] = np.array(["a", "b", "c"])[y]
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "wide.csv", index=False)
    (folder / "project.yaml").write_text(
        f"name: wide-{rows}x{features}\ntask: {{type: tabular_classification, target: label}}\n"
        f"data: {{source: {{kind: tabular, path: {folder / 'wide.csv'}}}}}\nsample: {{size: 200}}\n"
    )
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(step: str, project: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "trainwise", step, "--project", str(project)], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"trainwise {step} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    warnings = done.stderr.count("PerformanceWarning")
    print(f"  {step:8s} {elapsed:6.1f} s   ({warnings} pandas PerformanceWarnings)")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=990)
    parser.add_argument("--features", type=int, default=192)
    args = parser.parse_args()

    from trainwise.server import LocalServer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = write_project(root / "project", args.rows, args.features)
        server = LocalServer(root / "mlflow", port=_free_port())
        status = server.start(timeout=120)
        env = {**os.environ, "MLFLOW_TRACKING_URI": str(status.url), "TRAINWISE_HOME": str(root / "home")}
        try:
            print(
                f"{args.rows} rows x {args.features} features; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
            )
            timed("ingest", project, env)
            total = timed("explore", project, env) + timed("sample", project, env)
            print(f"  explore + sample: {total:.1f} s (budget 20 s)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
