"""The dashboard page in headless Chromium: its figures move under load; a screenshot is taken.

The screenshot goes to the test's temporary folder, or to ``$LAKESERVE_DASHBOARD_SCREENSHOT``
when set (``LAKESERVE_DASHBOARD_SCREENSHOT=docs/dashboard.png`` refreshes the one in the docs), so
that a test run leaves the checkout as it found it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from http_helpers import Server, post
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lakeserve.jobs.demo_data import request_bodies

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,720"]  # fmt: skip


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with tempfile.TemporaryDirectory(prefix="lakeserve-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            yield driver
        finally:
            driver.quit()


READ_ROWS = """
return Array.from(document.querySelectorAll('#rows tr')).map(tr => [tr.dataset.entity,
    Object.fromEntries(Array.from(tr.cells).map(td => [td.className, td.textContent]))]);
"""


def figures(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """The table as shown, read in one script call (the page re-renders it every 2 s)."""
    return {str(entity): cells for entity, cells in driver.execute_script(READ_ROWS)}


def total_requests(driver: webdriver.Chrome) -> int:
    return sum(int(f["requests"]) for name, f in figures(driver).items() if name != "none")


def test_dashboard_figures_move_under_load(
    rest: Server, browser: webdriver.Chrome, demo_assets: Any, tmp_path: Path
) -> None:
    customers = pd.read_parquet(demo_assets.data_dir / "customers.parquet")
    browser.get(f"{rest.url}/dashboard")
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("updated"))
    assert browser.find_element(By.ID, "endpoint").text == rest.settings.endpoint.name
    before = total_requests(browser)

    for body in request_bodies(customers, 60, seed=61):
        assert post(rest, body).status_code == 200
    wait.until(lambda d: total_requests(d) >= before + 60)  # the page refreshes by itself

    shown = figures(browser)
    assert {"champion", "challenger"} <= set(shown)
    for entity in ("champion", "challenger"):
        f = shown[entity]
        assert float(f["qps"]) > 0
        assert float(f["p50"]) <= float(f["p95"]) <= float(f["p99"])
        assert f["error-rate"].endswith("%")
        assert f["share"].endswith("%")
    shares = sum(float(shown[e]["share"].rstrip(" %")) for e in shown)
    assert 99.0 <= shares <= 101.0
    assert browser.find_elements(By.CSS_SELECTOR, "#split div")  # the live traffic split is drawn
    screenshot = Path(os.environ.get("LAKESERVE_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")
