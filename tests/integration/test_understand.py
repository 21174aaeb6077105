"""Step 1 for real against the fixture server: through `mlflow run`, the CLI, the cache and `run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from trainwise.cli import cli
from trainwise.steps import STEPS
from trainwise.steps.runner import TAG_STEP_RUN
from trainwise.tracking import TAG_CACHE_KEY, TAG_CONFIG_HASH, TAG_GIT_COMMIT, TAG_NOTE, TAG_PARENT, TAG_PROJECT, TAG_STEP

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")


def runs_of(tracking_server: str, experiment: str) -> list:
    client = MlflowClient(tracking_server)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_mlflow_run_understand_joins_the_run_mlflow_created(tracking_server: str, unique_name: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_server}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in MLproject = this venv's
    result = subprocess.run(
        [
            sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "understand",
            "-P", f"project={DIGITS}", "-P", f"set=name={unique_name}",
            "--env-manager", "local", "--experiment-name", unique_name,
        ],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    runs = runs_of(tracking_server, unique_name)
    assert len(runs) == 1, "mlflow run's run must be joined, not a second one created"
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[TAG_PROJECT] == unique_name and tags[TAG_STEP] == "understand"
    assert len(tags[TAG_CACHE_KEY]) == 20 and len(tags[TAG_CONFIG_HASH]) == 12
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    assert tags.get(TAG_GIT_COMMIT) == (head.stdout.strip() if head.returncode == 0 else None)
    assert tags[TAG_NOTE].startswith(f"# {unique_name}: problem card")
    assert run.data.params["project"] == DIGITS  # mlflow run's own parameter
    assert run.data.params["task.type"] == "image_classification"  # our flattened config
    artifacts = {a.path for a in MlflowClient(tracking_server).list_artifacts(run.info.run_id)}
    assert {"problem_card.md", "config.yaml", "peek.json"} <= artifacts


def test_understand_digits_card_and_cache(tracking_server: str, unique_name: str) -> None:
    invoke("understand", "--project", DIGITS, "--set", f"name={unique_name}")
    runs = runs_of(tracking_server, unique_name)
    assert len(runs) == 1
    run = runs[0]
    client = MlflowClient(tracking_server)
    card = Path(client.download_artifacts(run.info.run_id, "problem_card.md")).read_text()
    assert "| task | image classification, 10 classes |" in card
    assert "| metric | accuracy (maximize) |" in card
    assert "| training items | 1,437 |" in card and "| test items | 360 (unlabelled) |" in card
    assert "| network input | 8x8 pixels, 1 channel |" in card
    assert "CSV `id, label`" in card
    assert "| 0 | 142 | 9.9% |" in card  # class table with counts and shares
    assert "`trainwise ingest --project" in card  # the plan
    peek = json.loads(Path(client.download_artifacts(run.info.run_id, "peek.json")).read_text())
    assert sorted(peek["class_counts"]) == [str(d) for d in range(10)]
    assert run.data.metrics == {"n_train": 1437.0, "n_test": 360.0, "n_classes": 10.0}

    # Unchanged inputs: the finished run is reused, no new run.
    assert "reused cached run" in invoke("understand", "--project", DIGITS, "--set", f"name={unique_name}")
    assert len(runs_of(tracking_server, unique_name)) == 1
    # A changed setting the step reads: a new run.
    invoke("understand", "--project", DIGITS, "--set", f"name={unique_name}", "--set", "submission.format=index")
    assert len(runs_of(tracking_server, unique_name)) == 2
    # A setting it does not read: still cached.
    assert "reused" in invoke("understand", "--project", DIGITS, "--set", f"name={unique_name} train.epochs=2")
    # --force reruns.
    invoke("understand", "--project", DIGITS, "--set", f"name={unique_name}", "--force")
    assert len(runs_of(tracking_server, unique_name)) == 3


@pytest.mark.parametrize(
    ("project", "expected"),
    [
        ("wine", ["| task | tabular classification, 3 classes |", "| class_0 | 59 |", "| alcohol | float64 | 0 |"]),
        ("diabetes", ["| task | tabular regression |", "| metric | rmse (minimize) |", "## Target", "| bmi | float64 | 0 |"]),
    ],
)
def test_understand_tabular_projects(tracking_server: str, unique_name: str, project: str, expected: list[str]) -> None:
    invoke("understand", "--project", str(REPO / "projects" / project), "--set", f"name={unique_name}")
    (run,) = runs_of(tracking_server, unique_name)
    card = run.data.tags[TAG_NOTE]
    for fragment in expected:
        assert fragment in card


def test_understand_image_folder_notes_problems(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "pics"
    for label, count in (("cat", 3), ("dog", 2), ("empty", 0)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 10), (i * 40, 0, 0)).save(root / label / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "project.yaml").write_text(
        f"name: {unique_name}\ntask: {{type: image_classification}}\ndata: {{source: {{kind: image_folder, root: {root}}}}}\n"
    )
    invoke("understand", "--project", str(project))
    (run,) = runs_of(tracking_server, unique_name)
    card = run.data.tags[TAG_NOTE]
    assert "| cat | 3 |" in card and "| dog | 2 |" in card
    assert "`cat/0.png (12x10, RGB)`" in card
    assert "empty class folders: empty" in card
    assert "files that are not images: 1 .txt" in card
    assert "imbalance ratio (largest / smallest) inf" in card


def test_missing_target_column_fails_the_run_with_a_named_error(tracking_server: str, unique_name: str) -> None:
    result = CliRunner().invoke(cli, ["understand", "--project", str(REPO / "projects" / "wine"), "--set", f"name={unique_name} task.target=tagret"])
    assert result.exit_code == 1
    assert "no target column 'tagret' (did you mean 'target'?)" in result.output
    (run,) = runs_of(tracking_server, unique_name)
    assert run.info.status == "FAILED"


def test_run_pipeline_links_cached_steps_and_status_shows_next(tracking_server: str, digits_pipeline: tuple[str, str]) -> None:
    unique_name, output = digits_pipeline
    assert "submit" in output and "ran" in output
    assert f"MLflow UI:    {tracking_server}/#/experiments/" in output
    assert "findings:     report.html in the pipeline run's artifacts" in output
    runs = runs_of(tracking_server, unique_name)
    pipeline = next(r for r in runs if r.data.tags[TAG_STEP] == "main")
    step = next(r for r in runs if r.data.tags[TAG_STEP] == "understand")
    assert step.data.tags[TAG_PARENT] == pipeline.info.run_id
    assert pipeline.data.tags[TAG_STEP_RUN + "understand"] == step.info.run_id
    assert pipeline.info.status == "FINISHED"

    # Second pipeline run: understand is reused and linked, not rerun.
    invoke("run", "--project", DIGITS, "--set", f"name={unique_name}", "--dry-run")
    runs = runs_of(tracking_server, unique_name)
    assert sum(r.data.tags[TAG_STEP] == "understand" for r in runs) == 1
    second = max((r for r in runs if r.data.tags[TAG_STEP] == "main"), key=lambda r: r.info.start_time)
    assert second.data.tags[TAG_STEP_RUN + "understand"] == step.info.run_id
    assert second.data.metrics["steps_reused"] == len(STEPS)
    assert second.data.metrics["steps_ran"] == 0

    status = invoke("status", "--project", DIGITS, "--set", f"name={unique_name}", "--dry-run")
    assert "understand" in status and "fresh" in status and "every step is up to date" in status
    status = invoke("status", "--project", DIGITS, "--set", f"name={unique_name} submission.format=index", "--dry-run")
    assert "stale" in status
    assert "next: trainwise understand --project projects/digits" in status  # relative to the working directory
