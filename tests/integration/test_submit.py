"""Step 7 against the fixture server: the champion predicts the digits test folder into a validated, scored submission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.helpers import invoke
from trainwise.config import ProjectConfig, load_config
from trainwise.errors import TrackingError
from trainwise.steps import submit as submit_step
from trainwise.steps.runner import StepContext
from trainwise.tracking import CHAMPION, Registry, Tracker

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow



def submit(cfg: ProjectConfig, tracker: Tracker, settings: str, options: dict[str, Any] | None = None) -> str:
    """Run step 7 through the CLI and return its run id."""
    model = ("--model", options["model_uri"]) if options else ()
    invoke("submit", "--project", DIGITS, "--set", settings, "--dry-run", *model)
    return next(iter(tracker.search({"trainwise.step": "submit"}, max_results=1))).info.run_id


def test_digits_submission_from_the_champion_is_valid_and_scored(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    model_name = f"{unique_name}-model"  # the project's default name is shared by every test on this server
    settings = f"name={unique_name} train.epochs=3 registry.model_name={model_name}"
    invoke("run", "--project", DIGITS, "--set", settings, "--dry-run")  # tune/promote may not be built: fine
    cfg = load_config(DIGITS, (settings,), dry_run=True)
    tracker = Tracker(cfg.name, tracking_server)
    client = MlflowClient(tracking_server)

    train = tracker.latest("train", status="FINISHED")
    assert train is not None
    trained_uri = train.data.tags["trainwise.model_uri"]
    registry = Registry(tracking_server)
    version = registry.register(trained_uri, model_name)
    registry.set_alias(model_name, CHAMPION, version.version)

    run = client.get_run(submit(cfg, tracker, settings))
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["trainwise.model_uri"] == f"models:/{model_name}/{version.version}"
    assert tags["trainwise.model_version"] == version.version
    ingest = tracker.latest("ingest", status="FINISHED")
    assert ingest is not None and tags["trainwise.data_digest"] == ingest.data.tags["trainwise.data_digest"] != ""

    local = Path(client.download_artifacts(run.info.run_id, "submission.csv", str(tmp_path)))
    submission = pd.read_csv(local, dtype=str)
    assert submission.columns.tolist() == ["id", "label"]
    assert submission["id"].tolist() == [f"t{i:04d}" for i in range(360)]
    assert set(submission["label"]) <= {str(d) for d in range(10)}
    assert metrics["rows"] == 360 and metrics["scored_rows"] == 360
    assert metrics["submission_accuracy"] > 0.5
    assert sum(metrics[f"share.{d}"] for d in range(10)) == pytest.approx(1.0)
    assert f"accuracy {metrics['submission_accuracy']:.4f}" in tags["mlflow.note.content"]  # shown in the run description
    assert {"predicted_classes.csv", "predicted_classes.png", "submission.csv"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }

    # The score is the agreement with the hidden answers, recomputed here from the file.
    answers = pd.read_csv(Path(cfg.data.source.root) / "answers.csv", dtype=str)  # type: ignore[union-attr]
    agreement = (submission.merge(answers, on="id", suffixes=("", "_true")).eval("label == label_true")).mean()
    assert metrics["submission_accuracy"] == pytest.approx(agreement)

    # --model: predict with the trained model as given, not the champion.
    override = client.get_run(submit(cfg, tracker, settings, {"model_uri": trained_uri}))
    assert override.info.status == "FINISHED"
    assert override.data.tags["trainwise.model_uri"] == trained_uri
    assert "trainwise.model_version" not in override.data.tags
    assert override.data.metrics["submission_accuracy"] == pytest.approx(metrics["submission_accuracy"])  # the same weights

    # submission.tta: flip averages each test image with its mirror: another valid, scored file (digits never
    # trained on mirrored images, so the score may drop; the step warns about that)
    flip = f"{settings} submission.tta=flip"
    mirrored = client.get_run(submit(load_config(DIGITS, (flip,), dry_run=True), tracker, flip))
    assert mirrored.info.status == "FINISHED" and mirrored.data.metrics["scored_rows"] == 360
    assert mirrored.data.tags["trainwise.cache_key"] != run.data.tags["trainwise.cache_key"]  # not the plain run reused
    flipped = pd.read_csv(client.download_artifacts(mirrored.info.run_id, "submission.csv", str(tmp_path / "flip")), dtype=str)
    assert (flipped["label"] != submission["label"]).any()  # the mirror was used (MLflow only warns on a dropped param)


def test_no_champion_says_to_promote(tracking_server: str, unique_name: str) -> None:
    settings = f"name={unique_name} registry.model_name={unique_name}-none"
    cfg = load_config(DIGITS, (settings,), dry_run=True)
    tracker = Tracker(cfg.name, tracking_server)
    expected = rf"registered model '{unique_name}-none' has no 'champion' version.*run `trainwise promote --project"
    with pytest.raises(TrackingError, match=expected), tracker.run("submit") as run:
        submit_step.run(cfg, run, StepContext(tracker, {}, dry_run=True))
    assert MlflowClient(tracking_server).get_run(run.run_id).info.status == "FAILED"
