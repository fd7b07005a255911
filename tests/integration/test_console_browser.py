"""The console in a real browser: Debian's headless Chromium driven by selenium.

A person logs in, submits a spec from the submit page and watches the pipeline page
follow the run to success without reloading (server-sent events and the fragments
they trigger), chats with the published model (streamed), then sees a bad spec's
problems on their lines; the batch's comparison page is shot too. Screenshots of each
page at desktop (1280x800) and phone (390x844) width go to ``TUNESHIP_TEST_ARTIFACTS``
(default: the test's tmp directory), full height.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from tuneship.testing.console import TOKEN, Rig, console_stages, start_rig
from tuneship.testing.stages import ScriptedStage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZES = {"desktop": (1280, 800, False), "phone": (390, 844, True)}
SPEC = """apiVersion: tuneship/v1
metadata: {name: pirate-live, labels: {batch: demo}}
model: {base: s3://models/tiny}
dataset: {train: s3://data/train.jsonl}
"""
BAD_SPEC = """apiVersion: tuneship/v1
metadata: {name: typo}
model:
  bse: s3://models/tiny
dataset: {train: s3://data/train.jsonl}
"""


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("TUNESHIP_TEST_ARTIFACTS")
    folder = Path(root) / "console" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: `make browser` installs Debian's chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,800", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshots(driver: webdriver.Chrome, folder: Path, name: str) -> list[Path]:
    """The page, full height, at each of ``SIZES``."""
    saved = []
    for size, (width, height, mobile) in SIZES.items():
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        full = driver.execute_script("return document.documentElement.scrollHeight")
        metrics["height"] = max(height, int(full))
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        path = folder / f"{name}-{size}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        saved.append(path)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return saved


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    # Training slow enough (about 4 s) to be seen running, then the rest in a blink.
    started = start_rig(tmp_path, console_stages(
        train=ScriptedStage("train", steps=40, step_s=0.1, eval_every=5)))  # fmt: skip
    yield started
    started.stop()


def test_submit_from_the_page_and_watch_it_run_to_success(
    rig: Rig, browser: webdriver.Chrome, artifacts: Path
) -> None:
    # The live parts of a page are replaced as events come: an element may go stale.
    changing = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(browser, 30, poll_frequency=0.1, ignored_exceptions=changing)
    browser.get(rig.url + "/")
    assert "Log in first" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(rig.url + "/login")
    screenshots(browser, artifacts, "login")
    browser.find_element(By.ID, "token").send_keys(TOKEN.reveal())
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Pipelines")

    browser.find_element(By.LINK_TEXT, "Submit").click()
    browser.find_element(By.ID, "spec").send_keys(SPEC)
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    wait.until(lambda d: "/pipelines/" in d.current_url)
    browser.execute_script("window.loadedOnce = true")  # gone if the page reloads
    phase = lambda d: d.find_element(By.ID, "pipeline-phase").text  # noqa: E731
    wait.until(lambda d: phase(d) == "running" and d.find_elements(By.CSS_SELECTOR, "#log li"))
    wait.until(lambda d: "train: " in d.find_element(By.ID, "progress").text)
    wait.until(lambda d: phase(d) == "succeeded")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.recommended"))
    assert browser.execute_script("return window.loadedOnce") is True
    log = browser.find_element(By.ID, "log").text
    assert "train succeeded" in log and "publish" in log
    assert "q8_0" in browser.find_element(By.CSS_SELECTOR, "tr.recommended").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    pipeline_shots = screenshots(browser, artifacts, "pipeline")

    browser.find_element(By.LINK_TEXT, "Chat with the model").click()
    browser.find_element(By.ID, "chat-message").send_keys("ahoy")
    browser.find_element(By.CSS_SELECTOR, "#chat-form button[type=submit]").click()
    answer = ".turn-assistant .text"
    wait.until(lambda d: "heard ahoy" in d.find_element(By.CSS_SELECTOR, answer).text)
    assert browser.find_element(By.CSS_SELECTOR, answer).text.endswith(":latest heard ahoy")
    chat_shots = screenshots(browser, artifacts, "chat")

    browser.get(rig.url + "/")
    rows = lambda d: d.find_element(By.ID, "pipeline-rows").text  # noqa: E731
    wait.until(lambda d: "pirate-live" in rows(d) and "Batch demo" in rows(d))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#pipeline-rows .phase").text
               == "succeeded")  # fmt: skip
    list_shots = screenshots(browser, artifacts, "pipelines")

    browser.find_element(By.PARTIAL_LINK_TEXT, "Compare batch demo").click()
    table = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "table.compare"))
    assert "q8_0" in table.text and "final loss" in table.text
    compare_shots = screenshots(browser, artifacts, "compare")

    browser.get(rig.url + "/submit")
    browser.find_element(By.ID, "spec").send_keys(BAD_SPEC)
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    marked = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.bad .line-problem"))
    assert any("line 4: model.bse: unknown field" in m.text for m in marked)
    submit_shots = screenshots(browser, artifacts, "submit-errors")

    for path in (*pipeline_shots, *chat_shots, *list_shots, *compare_shots, *submit_shots):
        assert path.stat().st_size > 10_000, path
    print("screenshots:", *sorted(str(p) for p in artifacts.glob("*.png")), sep="\n  ")
