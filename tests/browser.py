"""Headless Chromium for the browser tests: a fresh profile, the system chromedriver, and finders by visible text.

Debian's `chromium` and `chromium-driver` packages (`python3 dev.py test` installs them when it runs
as root with apt-get); without them the `browser` fixture skips and says why. Elements are found by
the text a user reads (XPath), not by MLflow's generated CSS classes. Screenshots go to tmp_path,
and also to $TRAINWISE_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = (
    f"browser tests need {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver "
    "(`python3 dev.py test` does this when run as root)"
)
# The React UI fetches the run after the page loads: seconds when warm; the bound only catches a hang.
WAIT_S = 60


def browser_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def literal(text: str) -> str:
    """`text` as an XPath 1.0 string literal (no escapes in XPath 1.0: a quote needs concat())."""
    return f"'{text}'" if "'" not in text else "concat('" + "', \"'\", '".join(text.split("'")) + "')"


def exactly(text: str, tag: str = "*") -> str:
    return f"//{tag}[normalize-space(text())={literal(text)}]"


def containing(text: str, tag: str = "*") -> str:
    """The innermost `tag` elements whose text, markup stripped, contains `text`."""
    has = f"contains(normalize-space(.), {literal(text)})"
    return f"//{tag}[{has} and not(.//{tag}[{has}])]"


def shown(driver: WebDriver, xpath: str, what: str) -> WebElement:
    """The first displayed element matching `xpath`, waiting up to WAIT_S; fails showing the page text.

    Selenium's is_displayed() is false for text clipped by a collapsed container, so this checks
    what a user can see, not just what is in the DOM.
    """

    def first_displayed(drv: WebDriver) -> WebElement | Literal[False]:
        return next((e for e in drv.find_elements(By.XPATH, xpath) if e.is_displayed()), False)

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(first_displayed)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"{what} not shown within {WAIT_S} s at {driver.current_url}\n--- page text ---\n{page[:4000]}")


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    keep = os.environ.get("TRAINWISE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, driven by the system chromedriver (nothing downloaded)."""
    if not browser_available():
        pytest.skip(MISSING)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers' small /dev/shm crashes the renderer
        "--disable-background-networking",  # no update, safe-browsing or metrics calls: tests stay offline
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()
