"""Phases refuse illegal moves; worker tasks are never duplicated and respect capacity."""

from __future__ import annotations

import threading

import pytest
from tuneship.common.errors import Busy, FailedPrecondition
from tuneship.common.events import Progress
from tuneship.common.tasks import Finished, TaskRegistry, TaskState
from tuneship.controller.machine import Phase, check_move

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("current", "target"),
    [(Phase.SUCCEEDED, Phase.RUNNING), (Phase.SUCCEEDED, Phase.CANCELLED),
     (Phase.FAILED, Phase.SUCCEEDED), (Phase.PENDING, Phase.SUCCEEDED)],
)  # fmt: skip
def test_illegal_moves_are_refused(current: Phase, target: Phase) -> None:
    with pytest.raises(FailedPrecondition, match=f"is {current.value}"):
        check_move("pipeline p", current, target)


def test_retry_and_backoff_moves_are_legal() -> None:
    assert check_move("s", Phase.RUNNING, Phase.PENDING) is Phase.PENDING
    assert check_move("s", Phase.FAILED, Phase.PENDING) is Phase.PENDING


def test_same_task_id_attaches_and_capacity_is_enforced() -> None:
    registry = TaskRegistry("train", capacity=1)
    release = threading.Event()
    runs: list[str] = []

    def work(sink):
        runs.append("run")
        sink.emit(Progress("train", 1, 2))
        release.wait(5)
        return "done"

    first = registry.start_or_attach("t1", work)
    assert registry.start_or_attach("t1", work) is first
    with pytest.raises(Busy, match="1/1"):
        registry.start_or_attach("t2", work)
    release.set()
    items = list(first.follow(idle_s=0.1))
    finished = [i for i in items if isinstance(i, Finished)]
    assert finished == [Finished(TaskState.SUCCEEDED, result="done")]
    assert runs == ["run"]
    assert registry.start_or_attach("t2", lambda sink: "ok").task_id == "t2"


def test_cancel_reaches_the_stage_at_its_next_event() -> None:
    registry = TaskRegistry("merge")
    started = threading.Event()

    def work(sink):
        started.set()
        for step in range(10_000):
            sink.emit(Progress("merge", step, 10_000))
            threading.Event().wait(0.001)
        return "never"

    task = registry.start_or_attach("m1", work)
    started.wait(5)
    assert registry.cancel("m1")
    last = [i for i in task.follow(idle_s=0.1) if isinstance(i, Finished)][-1]
    assert last.state is TaskState.CANCELLED
    assert not registry.cancel("m1")  # already finished
