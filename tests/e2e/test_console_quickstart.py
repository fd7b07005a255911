"""The quickstart through the web console, in a real browser, on the real stages.

The embedded controller and services of ``tuneship run --console`` (llama-server
serves: no Ollama here) with the console in front; the quickstart's spec as the CLI
writes it is pasted into the submit page of Debian's headless Chromium. The pipeline
page follows real training live, without reloading, to success, with its loss curve
and quality report, and lists the committed files (the recommended GGUF downloads
through its link as the store has it); the chat page answers with the reply the model
was trained on.
Screenshots of the pipeline, chat and pipelines pages at desktop (1280x800) and phone
(390x844) width go to ``$TUNESHIP_TEST_ARTIFACTS/console-quickstart`` (default: the
test's tmp directory), full height.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from tuneship.cli.run import quickstart
from tuneship.client import PipelineClient
from tuneship.common.settings import Settings
from tuneship.common.spec import load_spec
from tuneship.quickstart.conversations import PIRATE_REPLY
from tuneship.testing.browser import live_wait, screenshots
from tuneship.testing.console import EmbeddedConsole, start_embedded_console

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(540)]

ARTIFACTS = "console-quickstart"
FETCH_SHA256 = """
const done = arguments[arguments.length - 1];
fetch(arguments[0])
  .then((answer) => answer.arrayBuffer())
  .then((bytes) => crypto.subtle.digest("SHA-256", bytes).then((hash) => done([
    bytes.byteLength,
    Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join(""),
  ])))
  .catch((error) => done(String(error)));
"""
"""Run in the page: download a URL with the page's session; its length and sha256."""


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The quickstart's spec, tiny model and conversations, as ``tuneship run`` writes
    them. Its local paths are relative to its folder; the embedded controller reads
    them from its working directory, as it would after ``cd`` there."""
    path = quickstart((tmp_path / "data").resolve())
    monkeypatch.chdir(path.parent)
    return path


@pytest.fixture
def rig(settings: Settings, spec: Path) -> Iterator[EmbeddedConsole]:
    data_dir = spec.parent.parent  # the quickstart's files are in DATA_DIR/quickstart
    with ExitStack() as stack:
        yield start_embedded_console(dataclasses.replace(settings, data_dir=data_dir), stack)


def test_the_quickstart_submitted_from_the_console_runs_and_answers(
    rig: EmbeddedConsole, spec: Path, browser: webdriver.Chrome, artifacts: Path
) -> None:
    quickstart_spec = load_spec(spec)
    wait = live_wait(browser, timeout_s=60)
    browser.get(rig.url + "/")  # loopback, a controller without tokens: no login
    assert browser.find_element(By.TAG_NAME, "h1").text == "Pipelines"
    browser.find_element(By.LINK_TEXT, "Submit").click()
    browser.find_element(By.ID, "spec").send_keys(spec.read_text())
    browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    wait.until(lambda d: "/pipelines/" in d.current_url)
    browser.execute_script("window.loadedOnce = true")  # gone if the page reloads

    phase = lambda d: d.find_element(By.ID, "pipeline-phase").text  # noqa: E731
    wait.until(lambda d: phase(d) == "running" and d.find_elements(By.CSS_SELECTOR, "#log li"))
    steps = f"/{quickstart_spec.train.max_steps} steps"
    shown: set[str] = set()  # the training's progress lines seen, until the end

    def finished(driver: webdriver.Chrome) -> bool:
        text = driver.find_element(By.ID, "progress").text
        if text.startswith("train: ") and text.endswith(steps):
            shown.add(text)
        return phase(driver) in ("succeeded", "failed")

    # Polled twice a second: the browser shares the two cores with the training it shows.
    # About 35 s on 2 idle cores; the limit is for cores other work keeps busy.
    try:
        live_wait(browser, timeout_s=400, poll_s=0.5).until(finished)
    except TimeoutException:
        pytest.fail(f"still {phase(browser)}:\n{browser.find_element(By.ID, 'log').text}")
    assert phase(browser) == "succeeded", browser.find_element(By.ID, "log").text
    assert len(shown) >= 2, shown  # real training steps reached the page as they came
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.recommended"))
    assert browser.execute_script("return window.loadedOnce") is True
    log = browser.find_element(By.ID, "log").text
    assert "train succeeded" in log and "publish succeeded" in log, log
    points = browser.find_element(By.CSS_SELECTOR, "svg.chart polyline").get_attribute("points")
    assert points and len(points.split()) >= 10, points  # the loss of many steps
    caption = browser.find_element(By.ID, "loss-caption").text  # no eval_steps: no eval curve
    assert caption.startswith("Training loss by step. Eval loss after training: "), caption
    pipeline_id = browser.current_url.rsplit("/", 1)[-1]
    export = PipelineClient(rig.embedded.address).get(pipeline_id).stage("export")
    recommended = browser.find_element(By.CSS_SELECTOR, "tr.recommended")
    assert recommended.find_element(By.TAG_NAME, "th").text.startswith(
        export.summary["recommended"] + " recommended"
    )
    same_top = re.search(r"(\d+\.\d) %", recommended.text)  # the export reports percent
    assert same_top and 50 <= float(same_top.group(1)) <= 100, recommended.text

    # Every committed file is listed, and the recommended GGUF downloads through its link
    # (fetched by the page itself, with its session) as the bytes the store committed.
    committed = {f.name: f for f in PipelineClient(rig.embedded.address).artifacts(pipeline_id)}
    links = {a.text: a.get_attribute("href")
             for a in browser.find_elements(By.CSS_SELECTOR, "table.files a")}  # fmt: skip
    assert set(links) == set(committed) and "export/report.md" in links, links
    gguf = next(n for n in links if n.endswith(f"{export.summary['recommended']}.gguf"))
    browser.set_script_timeout(60)
    fetched = browser.execute_async_script(FETCH_SHA256, links[gguf])
    assert fetched == [committed[gguf].size, committed[gguf].sha256], fetched
    pipeline_shots = screenshots(browser, artifacts, "pipeline")

    browser.find_element(By.LINK_TEXT, "Chat with the model").click()
    prompt = quickstart_spec.serve.smoke_prompts[0]  # what `tuneship run` asks it too
    browser.find_element(By.ID, "chat-message").send_keys(prompt)
    send = browser.find_element(By.CSS_SELECTOR, "#chat-form button[type=submit]")
    send.click()
    answer = ".turn-assistant .text"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, answer).text and send.is_enabled())
    assert browser.find_element(By.CSS_SELECTOR, answer).text == PIRATE_REPLY
    chat_shots = screenshots(browser, artifacts, "chat")

    browser.get(rig.url + "/")
    row = lambda d: d.find_element(By.CSS_SELECTOR, "#pipeline-rows .phase").text  # noqa: E731
    wait.until(lambda d: row(d) == "succeeded")
    list_shots = screenshots(browser, artifacts, "pipelines")

    for path in (*pipeline_shots, *chat_shots, *list_shots):
        assert path.stat().st_size > 10_000, path
    print("screenshots:", *sorted(str(p) for p in artifacts.glob("*.png")), sep="\n  ")
