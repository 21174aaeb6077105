"""Small helpers the integration tests share: run the CLI, find a step's runs."""

from __future__ import annotations

import traceback

from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Run

from trainwise.cli import cli


def invoke(*args: str, code: int | None = 0) -> str:
    """`trainwise ARGS` in-process; asserts its exit code (None: any) and returns what it printed."""
    result = CliRunner().invoke(cli, list(args))
    if code is not None and result.exit_code != code:
        crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and result.exception else ""
        raise AssertionError(f"`trainwise {' '.join(args)}` exited {result.exit_code}, expected {code}\n{result.output}\n{crash}")
    return result.output


def step_runs(server: str, experiment: str, step: str) -> list[Run]:
    """Runs of one step in one experiment, newest first."""
    client = MlflowClient(server)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], f"tags.`trainwise.step` = '{step}'", order_by=["attributes.start_time DESC"])
