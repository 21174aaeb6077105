"""docker/postgres/init-databases.sh against the machine's real PostgreSQL on 127.0.0.1:5432.

The postgres image runs this script once on an empty data volume; here it runs the same way
(POSTGRES_USER set, psql on PATH) with libpq pointed at the local server.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = REPO / "docker" / "postgres" / "init-databases.sh"
PG = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "POSTGRES_USER": "postgres"}

pytestmark = pytest.mark.postgres


def psql(sql: str) -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc", sql],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    pair = (f"tw_mlflow_{suffix}", f"tw_optuna_{suffix}")
    yield pair
    for name in pair:
        psql(f'DROP DATABASE IF EXISTS "{name}"')


def run_script(mlflow_db: str, optuna_db: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PG, "TRAINWISE_MLFLOW_DB": mlflow_db, "TRAINWISE_OPTUNA_DB": optuna_db}
    return subprocess.run([str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)


def databases(prefix: str) -> set[str]:
    return set(psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'").split())


def test_init_script_creates_both_databases(names: tuple[str, str]) -> None:
    # Executable, so the postgres entrypoint runs it instead of sourcing it into its own shell.
    assert os.access(INIT_SCRIPT, os.X_OK)
    done = run_script(*names)
    assert done.returncode == 0, done.stderr
    assert databases("tw_") >= set(names)
    assert psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{names[0]}'") == "postgres"


def test_one_shared_database_is_refused(names: tuple[str, str]) -> None:
    done = run_script(names[0], names[0])
    assert done.returncode == 1
    assert "need different databases" in done.stderr
    assert names[0] not in databases("tw_")


def test_it_stops_at_the_first_failure(names: tuple[str, str]) -> None:
    psql(f'CREATE DATABASE "{names[0]}"')  # already there: CREATE fails
    done = run_script(*names)
    assert done.returncode != 0
    assert "already exists" in done.stderr
    assert names[1] not in databases("tw_")  # the second was never attempted
