"""The controller's state store over SQLite and a real PostgreSQL server.

Writes from many threads, and from two stores (two controllers' worth of connections,
no lock in common) on one database: every event gets its own sequence number and
Watch reads them back in order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tuneship.common.errors import FailedPrecondition, NotFound
from tuneship.common.stages import STAGES
from tuneship.controller.machine import Phase
from tuneship.controller.state import StateStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    opened = StateStore(state_url)
    yield opened
    opened.close()


def make(store: StateStore, name: str, priority: int = 0) -> str:
    return store.create(name, '{"spec": 1}', priority, {"team": name}, {"base": {"key": "k"}})


def test_a_pipeline_is_created_pending_with_its_stages_and_a_first_event(store) -> None:
    pid = make(store, "new")
    view = store.get(pid)
    assert view.phase is Phase.PENDING and view.spec_json == '{"spec": 1}'
    assert view.labels == {"team": "new"} and view.inputs == {"base": {"key": "k"}}
    assert [s.name for s in view.stages] == list(STAGES)
    assert all(s.phase is Phase.PENDING and s.attempts == 0 for s in view.stages)
    [first] = store.events(pid)
    assert (first.seq, first.kind, first.payload["message"]) == (1, "transition", "submitted")
    with pytest.raises(NotFound):
        store.get("nope")


def test_transitions_follow_the_state_machine_and_persist(store, state_url) -> None:
    pid = make(store, "moves")
    store.set_pipeline(pid, Phase.RUNNING)
    stage = store.update_stage(pid, "train", phase=Phase.RUNNING, task_id=f"{pid}.train.1",
                               attempts=1, summary={"loss": 0.5})  # fmt: skip
    assert stage.phase is Phase.RUNNING and stage.summary == {"loss": 0.5}
    with pytest.raises(FailedPrecondition, match="is running and cannot become running"):
        store.update_stage(pid, "train", phase=Phase.RUNNING)
    store.update_stage(pid, "train", phase=Phase.SUCCEEDED, outputs={"train": {"key": "o"}})
    with pytest.raises(FailedPrecondition, match="succeeded and cannot become pending"):
        store.update_stage(pid, "train", phase=Phase.PENDING)
    store.set_pipeline(pid, Phase.FAILED, error="merge: boom")
    reopened = StateStore(state_url)  # what a restarted controller sees
    try:
        view = reopened.get(pid)
        assert view.phase is Phase.FAILED and view.error == "merge: boom"
        assert view.stage("train").phase is Phase.SUCCEEDED
        assert view.stage("train").outputs == {"train": {"key": "o"}}
        assert view.stage("train").task_id == f"{pid}.train.1"
        assert reopened.ids_in_phase(Phase.FAILED) == [pid]
    finally:
        reopened.close()


def test_list_filters_pages_and_scheduler_order(store) -> None:
    low, high, other = make(store, "job-a"), make(store, "job-b", priority=5), make(store, "x")
    store.set_pipeline(other, Phase.CANCELLED)
    assert store.ids_in_phase(Phase.PENDING) == [high, low]  # priority, then oldest
    page, more = store.list_pipelines(name_prefix="job-", limit=1)
    assert [p.id for p in page] == [high] and more
    page, more = store.list_pipelines(name_prefix="job-", offset=1, limit=1)
    assert [p.id for p in page] == [low] and not more
    assert [p.id for p in store.list_pipelines(phase=Phase.CANCELLED)[0]] == [other]
    assert [p.id for p in store.list_pipelines(labels={"team": "job-a"})[0]] == [low]


def test_events_come_back_in_seq_order_and_delete_removes_everything(store) -> None:
    pid = make(store, "log")
    for step in range(1, 8):
        store.add_event(pid, "train", "progress",
                        {"step": step, "task": f"{pid}.train.1", "task_seq": step})  # fmt: skip
    store.add_event(pid, "train", "progress", {"task": f"{pid}.train.2", "task_seq": 2})
    events = store.events(pid)
    assert [e.seq for e in events] == list(range(1, 10))
    assert [e.payload.get("step") for e in events[1:8]] == list(range(1, 8))
    assert [e.seq for e in store.events(pid, after_seq=5, limit=2)] == [6, 7]
    assert store.last_task_seq(pid, f"{pid}.train.1") == 7
    assert store.last_task_seq(pid, f"{pid}.train.2") == 2
    assert store.last_task_seq(pid, f"{pid}.train.3") == 0
    store.delete(pid)
    with pytest.raises(NotFound):
        store.get(pid)
    assert store.events(pid) == []
    with pytest.raises(NotFound):
        store.add_event(pid, "", "transition", {})


@pytest.mark.timeout(120)
def test_concurrent_writers_never_share_a_sequence_number(store, state_url) -> None:
    pipelines = [make(store, f"busy{i}") for i in range(2)]
    second = StateStore(state_url)  # a second set of connections, not sharing the lock
    threads_per_store, per_thread = 4, 40
    errors: list[BaseException] = []
    start = threading.Barrier(2 * threads_per_store)

    def write(target: StateStore, writer: int) -> None:
        try:
            start.wait()
            for n in range(per_thread):
                for pid in pipelines:
                    target.add_event(pid, "train", "log", {"writer": writer, "n": n})
                    if n % 10 == 0:
                        target.update_stage(pid, "train", summary={"writer": writer})
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(target, i * 10 + t))
        for i, target in enumerate((store, second))
        for t in range(threads_per_store)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
    finally:
        second.close()
    assert not errors, errors[:3]
    total = 2 * threads_per_store * per_thread
    for pid in pipelines:
        events = store.events(pid, limit=10_000)
        assert [e.seq for e in events] == list(range(1, total + 2))  # + "submitted"
        for writer in {e.payload["writer"] for e in events[1:]}:  # each writer's own order
            mine = [e.payload["n"] for e in events if e.payload.get("writer") == writer]
            assert mine == list(range(per_thread))
