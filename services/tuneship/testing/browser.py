"""A real browser for the console's tests: Debian's headless Chromium through selenium.

``headless_chromium`` starts it (``make browser`` installs chromium and its driver; no
browser is ever downloaded), ``live_wait`` waits on pages whose parts are replaced as
events come, ``screenshots`` saves a page full height at desktop and phone width. The
``browser`` and ``artifacts`` fixtures of ``tests/conftest.py`` are built on them.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZES = {"desktop": (1280, 800, False), "phone": (390, 844, True)}
"""Screenshot widths: name → (width, height, mobile)."""


@contextmanager
def headless_chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium at 1280x800, quit on exit.

    Raises AssertionError naming ``make browser`` when chromium or its driver is missing."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: `make browser` installs Debian's chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,800", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def live_wait(
    driver: webdriver.Chrome, timeout_s: float = 30, poll_s: float = 0.1
) -> WebDriverWait[webdriver.Chrome]:
    """A wait that polls every ``poll_s`` and looks again when the element it read was
    replaced (the live parts of a page are) or is not there yet."""
    changing = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout_s, poll_frequency=poll_s, ignored_exceptions=changing)


def screenshots(driver: webdriver.Chrome, folder: Path, name: str) -> list[Path]:
    """The page, full height, at each of ``SIZES``: ``folder/NAME-SIZE.png``."""
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
