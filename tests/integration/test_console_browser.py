"""The console in a real browser: Debian's headless Chromium driven by selenium.

A person logs in, submits a spec from the submit page and watches the pipeline page
follow the run to success without reloading (server-sent events and the fragments
they trigger), chats with the published model (streamed), then sees a bad spec's
problems on their lines; the batch's comparison page is shot too. Screenshots of each
page at desktop (1280x800) and phone (390x844) width go to
``$TUNESHIP_TEST_ARTIFACTS/console`` (default: the test's tmp directory), full height.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from tuneship.common.store import LocalStore
from tuneship.testing.browser import live_wait, screenshots
from tuneship.testing.console import FILES, TOKEN, Rig, console_stages, start_rig
from tuneship.testing.stages import ScriptedStage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ARTIFACTS = "console"
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
def rig(tmp_path: Path) -> Iterator[Rig]:
    # Training slow enough (about 4 s) to be seen running, then the rest in a blink.
    store = LocalStore(tmp_path / "store")  # the stages commit their files: the page lists them
    started = start_rig(tmp_path, console_stages(store, train=ScriptedStage(
        "train", steps=40, step_s=0.1, eval_every=5, store=store, files=FILES["train"],
    )), store=store)  # fmt: skip
    yield started
    started.stop()


def test_submit_from_the_page_and_watch_it_run_to_success(
    rig: Rig, browser: webdriver.Chrome, artifacts: Path
) -> None:
    wait = live_wait(browser)
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
    assert "export/pirate-q8_0.gguf" in browser.find_element(By.CSS_SELECTOR, "table.files").text
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
