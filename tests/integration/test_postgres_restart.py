"""PostgreSQL restarts under a running controller: it reconnects and carries on.

Each test runs its own PostgreSQL server (the session's stays up for the others), stops
it for a few seconds and starts it again on the same port with the same data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tuneship.common.stages import STAGES
from tuneship.controller.database import Reconnect, StateUnavailable
from tuneship.controller.machine import Phase
from tuneship.controller.state import StateStore
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.postgres import PostgresServer, postgres_server
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2

pytestmark = pytest.mark.integration

SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: s3://models/tiny}}
dataset: {{train: s3://data/train.jsonl}}
"""
TRAIN_STEPS = 25


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def test_a_store_call_waits_for_a_restarted_database(own_postgres) -> None:
    store = StateStore(own_postgres.create_database())
    try:
        pid = store.create("before", "{}", 0, {}, {})
        own_postgres.stop()
        answered: list[float] = []
        waiting = threading.Thread(
            target=lambda: answered.append(store.add_event(pid, "", "log", {}))
        )
        waiting.start()
        time.sleep(2)
        assert waiting.is_alive()  # still trying, not failed
        own_postgres.start()
        waiting.join(20)
        assert answered == [2]
        assert store.get(pid).phase is Phase.PENDING  # pooled connections were replaced
    finally:
        store.close()


def test_a_database_down_past_the_bound_is_a_clear_unavailable(own_postgres) -> None:
    store = StateStore(own_postgres.create_database(), Reconnect(give_up_after_s=1.5))
    try:
        own_postgres.stop()
        began = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            store.ids_in_phase(Phase.PENDING)
        assert 1.0 < time.monotonic() - began < 10
        assert caught.value.status == "UNAVAILABLE" and caught.value.retryable
        assert "the state database did not answer for 2s" in caught.value.message
        assert caught.value.where == store.url and "TUNESHIP_STATE_URL" in str(caught.value.hint)
    finally:
        store.close()


def get(cluster: Cluster, pid: str) -> pipeline_pb2.Pipeline | None:
    """The pipeline, or None while the controller answers UNAVAILABLE (database down)."""
    try:
        return cluster.stub.Get(pipeline_pb2.GetRequest(id=pid), timeout=60)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.UNAVAILABLE, error
        return None


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "give_up_after_s", [30.0, 1.0], ids=["calls-wait-it-out", "calls-give-up-then-reattach"]
)
def test_the_controller_carries_on_after_postgres_restarts(
    own_postgres, tmp_path: Path, give_up_after_s: float
) -> None:
    stages = {name: ScriptedStage(name, steps=4, step_s=0.02) for name in STAGES}
    stages["train"] = ScriptedStage("train", steps=TRAIN_STEPS, step_s=0.1)
    cluster = start_cluster(
        tmp_path,
        stages,
        capacity={"train": 3},
        limits={**dict.fromkeys(STAGES, 1), "train": 3},
        state_url=own_postgres.create_database(),
    )
    cluster.controller.state.reconnect = Reconnect(give_up_after_s=give_up_after_s)
    try:
        pids = [
            cluster.stub.Submit(pipeline_pb2.SubmitRequest(spec_yaml=SPEC.format(name=f"p{i}"))).id
            for i in range(4)
        ]
        while len(stages["train"].calls) < 3:  # three trainings under way
            time.sleep(0.05)
        time.sleep(0.5)
        own_postgres.stop()
        time.sleep(3)  # trainings go on recording nothing; the API answers UNAVAILABLE
        own_postgres.start()
        back = time.monotonic()
        answered = recorded = None
        before = {pid: len(cluster.controller.state.events(pid, limit=10_000)) for pid in pids}
        deadline = time.monotonic() + 90
        finished: dict[str, pipeline_pb2.Pipeline] = {}
        while len(finished) < len(pids):
            assert time.monotonic() < deadline, f"only {sorted(finished)} finished"
            for pid in pids:
                view = get(cluster, pid)
                if view is not None and answered is None:
                    answered = time.monotonic() - back
                if view is not None and view.phase == pipeline_pb2.SUCCEEDED:
                    finished[pid] = view
                assert view is None or view.phase in (
                    pipeline_pb2.PENDING,
                    pipeline_pb2.RUNNING,
                    pipeline_pb2.SUCCEEDED,
                ), view
            if recorded is None and any(
                len(cluster.controller.state.events(pid, limit=10_000)) > before[pid]
                for pid in pids
            ):
                recorded = time.monotonic() - back
            time.sleep(0.05)
        all_done = time.monotonic() - back
        print(
            f"\nPostgreSQL back: API answered after {answered:.2f}s, first event recorded "
            f"after {recorded:.2f}s, all {len(pids)} pipelines done after {all_done:.2f}s"
        )
        for name, stage in stages.items():  # every stage ran exactly once per pipeline
            assert sorted(stage.calls) == sorted(f"{pid}.{name}.1" for pid in pids), name
        for pid, view in finished.items():
            assert all(s.attempts == 1 for s in view.stages)  # the outage used no attempt
            steps = [
                e.stage_event.progress.step
                for e in cluster.stub.Watch(pipeline_pb2.WatchRequest(id=pid), timeout=30)
                if e.stage_event.stage == "train" and e.stage_event.WhichOneof("kind") == "progress"
            ]
            assert steps == list(range(1, TRAIN_STEPS + 1)), pid  # each step once, in order
        scheduler_thread = cluster.controller.scheduler._thread
        assert scheduler_thread is not None and scheduler_thread.is_alive()
    finally:
        cluster.stop()
