"""What a user sees: a step's run, its problem card and its artifacts in the MLflow UI, in a real browser.

Headless Chromium from Debian's `chromium` and `chromium-driver` packages (`python3 dev.py test`
installs them when it runs as root with apt-get); without them this module skips and says why.
Elements are found by the text a user reads (XPath), not by MLflow's generated CSS classes.
Screenshots go to tmp_path, and also to $TRAINWISE_SCREENSHOTS when it is set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import MISSING, browser_available, containing, exactly, screenshot, shown
from trainwise.cli import cli

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "projects" / "digits")

if not browser_available():
    pytest.skip(MISSING, allow_module_level=True)


@pytest.mark.slow
def test_user_sees_the_understand_run_its_card_and_artifacts(
    tracking_server: str, unique_name: str, browser: WebDriver, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["understand", "--project", DIGITS, "--set", f"name={unique_name}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name(unique_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])

    # The link trainwise prints is the one a user clicks.
    printed = next(line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith("understand finished: "))
    assert printed.startswith(f"{tracking_server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    browser.get(printed)
    try:
        # MLflow 3 opens in its GenAI layout unless the link asks for model training.
        shown(browser, exactly("Model registry"), "the model-training layout ('Model registry' in the menu)")
        shown(browser, exactly("understand"), "the run name 'understand'")
        shown(browser, exactly("Finished"), "the run status 'Finished'")
        # The problem card is the run's description, rendered as markdown: a heading, then a table.
        heading = shown(browser, containing("problem card", "h1"), "the problem card's heading")
        assert heading.text == f"{unique_name}: problem card"
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", heading)
        shown(browser, containing("image classification, 10 classes"), "the card's task row")
    finally:
        screenshot(browser, tmp_path, "run-overview")
    # A long description is collapsed: the rest of the card is one click away.
    shown(browser, exactly("Show more"), "the description's 'Show more'").click()
    shown(browser, containing("accuracy (maximize)"), "the card's metric row after 'Show more'")

    shown(browser, "//*[@role='tab'][normalize-space(.)='Artifacts']", "the Artifacts tab").click()
    try:
        shown(browser, exactly("problem_card.md"), "problem_card.md in the artifact list").click()
        shown(browser, exactly("config.yaml"), "config.yaml in the artifact list")
        # The artifact viewer renders the markdown file too (the description is not on this view).
        shown(browser, containing("1,437"), "the card's training-items row in the artifact preview")
    finally:
        screenshot(browser, tmp_path, "run-artifacts")
