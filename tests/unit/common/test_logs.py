"""The log formatters: one JSON object per line with the task's ids, text for people,
known secrets masked whoever logs them."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from tuneship.common.logs import configure_logging, in_task_context, task_context

pytestmark = pytest.mark.unit


@pytest.fixture
def logged() -> io.StringIO:
    stream = io.StringIO()
    handler = configure_logging("json", "debug", ["sekrit-1234"], stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_task_context_and_extra_wins(logged: io.StringIO) -> None:
    log = logging.getLogger("tuneship.test")
    log.info("outside")
    with task_context(pipeline_id="p1", stage="train", attempt=2, task_id="p1.train.2"):
        log.info("inside %s", "it")
        log.info("overridden", extra={"stage": "merge"})
    thread = threading.Thread(target=in_task_context(log.warning, task_id="t9"), args=("x",))
    thread.start()
    thread.join()
    first, inside, overridden, in_thread = lines(logged)
    assert in_thread["task_id"] == "t9" and "stage" not in in_thread
    assert set(first) == {"time", "level", "logger", "message"}
    assert inside == {**inside, "message": "inside it", "level": "info", "logger": "tuneship.test",
                      "pipeline_id": "p1", "stage": "train", "attempt": 2,
                      "task_id": "p1.train.2"}  # fmt: skip
    assert overridden["stage"] == "merge" and overridden["task_id"] == "p1.train.2"


def test_secrets_are_masked_and_exceptions_kept(logged: io.StringIO) -> None:
    log = logging.getLogger("tuneship.test")
    try:
        raise RuntimeError("connect to s3 with sekrit-1234 failed")
    except RuntimeError:
        log.exception("url http://u:sekrit-1234@h")
    (line,) = lines(logged)
    assert "sekrit-1234" not in json.dumps(line)
    assert line["message"] == "url http://u:***@h"
    assert "RuntimeError" in line["error"]


def test_text_lines_name_the_task_and_mask_secrets() -> None:
    stream = io.StringIO()
    handler = configure_logging("text", "warning", ["sekrit-1234"], stream=stream)
    try:
        log = logging.getLogger("tuneship.test")
        with task_context(pipeline_id="p1", stage="export"):
            log.info("below the level")
            log.warning("token sekrit-1234")
    finally:
        logging.getLogger().removeHandler(handler)
    (text,) = stream.getvalue().splitlines()
    assert text.endswith("WARNING tuneship.test: [pipeline_id=p1 stage=export] token ***")
