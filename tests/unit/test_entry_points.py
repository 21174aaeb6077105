"""The ways in agree: MLproject entry points vs click commands, README vs .ci/run, conda.yaml vs pyproject."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from trainwise.cli import cli
from trainwise.steps import STEP_NAMES, STEPS

REPO = Path(__file__).resolve().parents[2]


def mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def test_mlproject_has_main_and_one_entry_point_per_step() -> None:
    entry_points = mlproject()["entry_points"]
    assert set(entry_points) == {"main", *STEP_NAMES}
    assert mlproject()["conda_env"] == "conda.yaml"


@pytest.mark.parametrize("entry", ["main", *STEP_NAMES])
def test_entry_point_parameters_are_the_click_options(entry: str) -> None:
    spec = mlproject()["entry_points"][entry]
    words = spec["command"].split()
    assert words[:3] == ["python", "-m", "trainwise"]
    command_name = words[3]
    assert command_name == ("run" if entry == "main" else entry)
    command = cli.commands[command_name]
    options = {opt: param for param in command.params if isinstance(param, click.Option) for opt in param.opts}
    for name, parameter in spec["parameters"].items():
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"{entry}: MLproject parameter {name!r} has no click option {flag}"
        assert f"{flag} {{{name}}}" in spec["command"], f"{entry}: {name} is not passed as {flag}"
        default = str(options[flag].default)
        assert str(parameter.get("default")).lower() in {default.lower(), ""} or name == "set"
    # and every shared click option is reachable from MLflow
    shared = {"--project", "--set", "--force", "--dry-run"}
    assert shared <= {"--" + n.replace("_", "-") for n in spec["parameters"]}


def test_every_step_has_a_click_command_with_the_shared_options() -> None:
    for spec in STEPS:
        command = cli.commands[spec.name]
        flags = {opt for param in command.params for opt in param.opts}
        assert {"--project", "--set", "--force", "--dry-run"} <= flags


def readme_commands() -> list[str]:
    """The commands in the README's first code block."""
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README has no code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = readme.index("```")
    assert readme[:first_block].strip().startswith("# trainwise") and readme[:first_block].count("\n") <= 3
    run_command, test_command = readme_commands()
    assert "run" in run_command and "test" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def dependency_names(requirements: list[str]) -> dict[str, str]:
    pattern = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$")
    result = {}
    for requirement in requirements:
        match = pattern.match(requirement.strip())
        assert match, requirement
        result[match.group(1).lower()] = match.group(3).replace(" ", "")
    return result


def test_conda_yaml_mirrors_pyproject_pins() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dependency_names(pyproject["dependencies"] + pyproject["optional-dependencies"]["postgres"])
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    mirrored = dependency_names([r for r in pip_section if not r.startswith("-e")])
    assert mirrored == wanted
    assert "python=3.11" in conda["dependencies"]
    assert wanted["torch"] == ">=2.14" and wanted["torchvision"] == ">=0.29"


def test_cli_help_lists_every_step() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in (*STEP_NAMES, "run", "status", "server"):
        assert name in result.output


def test_config_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["understand", "--project", str(REPO / "projects" / "digits"), "--set", "train.epoch=3"], env={"TRAINWISE_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_trainwise_is_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "trainwise", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "understand" in result.stdout


@pytest.mark.slow
def test_the_test_command_fails_when_no_test_runs() -> None:
    """`python3 dev.py test` (what .ci/run calls) must not pass on a run that executes nothing."""
    env = {**os.environ, "TRAINWISE_VENV": sys.prefix}
    result = subprocess.run(
        [sys.executable, str(REPO / "dev.py"), "test", "tests/unit/test_config.py", "-k", "no_such_test_anywhere", "-p", "no:cacheprovider"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no test ran" in result.stdout + result.stderr
