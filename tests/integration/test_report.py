"""report.html: every step's findings on one page, logged on the pipeline run and read in a real browser."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import containing, exactly, screenshot, shown
from tests.helpers import invoke
from trainwise.steps import STEPS
from trainwise.steps.runner import TAG_STEP_RUN

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

pytestmark = pytest.mark.slow


def first_pipeline(server: str, name: str) -> Run:
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`trainwise.step` = 'main'", order_by=["attributes.start_time ASC"])
    return runs[0]


def report_of(server: str, run: Run, tmp_path: Path) -> str:
    return Path(MlflowClient(server).download_artifacts(run.info.run_id, "report.html", str(tmp_path))).read_text()


def test_the_pipeline_logs_one_self_contained_findings_report(tracking_server: str, digits_pipeline: tuple[str, str], tmp_path: Path) -> None:
    name, _ = digits_pipeline
    pipeline = first_pipeline(tracking_server, name)
    page = report_of(tracking_server, pipeline, tmp_path)
    # every step, in the steps' order, then what to try next
    titles = [html.escape(f"{spec.number}. {spec.title}") for spec in STEPS] + ["What to try next"]
    positions = [page.find(f">{title}</h2>") for title in titles]
    assert all(p > 0 for p in positions) and positions == sorted(positions), dict(zip(titles, positions, strict=True))
    # self-contained: figures inline, nothing fetched when the UI's sandboxed frame shows it offline
    assert page.count('<img src="data:image/png;base64,') >= 8
    assert not re.search(r"<(script|link|iframe|object)\b", page) and not re.search(r'\bsrc="(?!data:)', page)
    # the figures come from the runs: the train run's test accuracy, the check table, the submission score
    client = MlflowClient(tracking_server)
    train = client.get_run(pipeline.data.tags[TAG_STEP_RUN + "train"])
    submit = client.get_run(pipeline.data.tags[TAG_STEP_RUN + "submit"])
    assert f"test accuracy {train.data.metrics['test_accuracy']:.4g}" in page
    assert f"accuracy {submit.data.metrics['submission_accuracy']:.4g}" in page
    assert "overfit_one_batch" in page and "Best trials" in page
    assert "report.html" in pipeline.data.tags["mlflow.note.content"]


def test_a_pipeline_stopped_by_failed_checks_still_reports_what_ran(tracking_server: str, unique_name: str, tmp_path: Path) -> None:
    output = invoke("run", "--project", DIGITS, "--set", f"name={unique_name} checks.min_loss_decrease=0.999", "--dry-run", code=1)
    assert "the pipeline checks for this data and config failed" in output  # train refuses to start
    pipeline = first_pipeline(tracking_server, unique_name)
    assert pipeline.info.status == "FAILED"
    page = report_of(tracking_server, pipeline, tmp_path)
    assert ">4. pipeline checks on the sample</h2>" in page and ">6. Optuna tuning</h2>" not in page
    train = page[page.index(">5. train on the full data</h2>") :]  # the step that refused, with its state
    assert "This run ended FAILED." in train[: train.index("</section>")]
    # the failed row leads what to try next, and its figure is shown
    advice = page[page.index(">What to try next</h2>") :]
    assert "check: checks failed (training_loss_decreases" in html.unescape(advice)
    assert 'alt="training loss decreases"' in page


def test_the_report_reads_in_the_mlflow_ui(tracking_server: str, digits_pipeline: tuple[str, str], browser: WebDriver, tmp_path: Path) -> None:
    name, _ = digits_pipeline
    pipeline = first_pipeline(tracking_server, name)
    browser.get(f"{tracking_server}/#/experiments/{pipeline.info.experiment_id}/runs/{pipeline.info.run_id}?workflowType=machine_learning")
    shown(browser, "//*[@role='tab'][normalize-space(.)='Artifacts']", "the Artifacts tab").click()
    shown(browser, exactly("report.html"), "report.html in the artifact list").click()
    try:
        # MLflow shows an HTML artifact in a sandboxed iframe: the report must read there, offline
        frame = shown(browser, "//iframe", "the artifact preview frame")
        browser.switch_to.frame(frame)
        shown(browser, exactly("What to try next", "h2"), "the report's 'What to try next'")
        shown(browser, containing("Open the train run in the MLflow UI", "p"), "the link to the train run")
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
        )
        images = len(browser.find_elements(By.TAG_NAME, "img"))
        assert images >= 8 and broken == [], f"{len(broken)} of {images} figures did not load: {broken}"
    finally:
        browser.switch_to.default_content()
        screenshot(browser, tmp_path, "report-in-the-ui")
