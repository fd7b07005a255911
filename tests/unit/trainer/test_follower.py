"""The follower's process exit: what ``serve trainer --once`` on a node other than node 0
returns for each way its share of the training ends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from tuneship.common.errors import (
    EXIT_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    InvalidInput,
    Unavailable,
)
from tuneship.common.jobs import StageJob
from tuneship.common.stagework import StageContext
from tuneship.common.store.local import LocalStore
from tuneship.trainer.follower import run_follower

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

JOB = StageJob("p.train.1", "p", "{}", {}, "out")


def context(tmp_path: Path) -> StageContext:
    return StageContext(LocalStore(tmp_path / "store"), tmp_path / "work")


@pytest.mark.parametrize(
    ("raised", "code"),
    [(None, EXIT_OK), (Unavailable("node 0 went away"), EXIT_FAILED),
     (InvalidInput("bad spec"), EXIT_INVALID_INPUT), (RuntimeError("bug"), EXIT_FAILED)],
)  # fmt: skip
def test_the_exit_code_says_how_the_ranks_ended(
    tmp_path: Path, raised: Exception | None, code: int
) -> None:
    seen: list[StageJob] = []

    def follow(ctx: StageContext, job: StageJob, stop) -> None:
        seen.append(job)
        if raised is not None:
            raise raised

    assert run_follower(context(tmp_path), JOB, threading.Event(), follow) == code
    assert seen == [JOB]


def test_sigterm_asks_the_ranks_to_stop_and_waits_for_them(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    asked: list[float] = []

    def follow(ctx: StageContext, job: StageJob, stopping) -> None:
        while not stopping():  # the ranks save a checkpoint at the end of their step
            time.sleep(0.05)
        asked.append(time.monotonic())
        raise Unavailable("training stopped at step 3 because the worker is stopping")

    assert run_follower(context(tmp_path), JOB, stop, follow) == EXIT_FAILED
    assert asked  # it waited for the ranks, which saw the request
