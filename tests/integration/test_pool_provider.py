"""The k8s-pool provider against real stage servers on loopback: placement on the least
busy Ready endpoint, re-attach after a controller restart without a second run, and an
endpoint that leaves the pool mid-stage. The EndpointSlices are given directly (the
informer that keeps them is exercised against the fake API in tests/e2e)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.wire import Server, StageServicer, stage_service
from tuneship.controller.providers.k8s_pool import PoolProvider
from tuneship.controller.scheduler import StageFailure
from tuneship.controller.wire_clients import Channels
from tuneship.testing.stages import ScriptedStage

pytestmark = pytest.mark.integration


class GivenSlices:
    """EndpointSlices set by the test."""

    def __init__(self) -> None:
        self.slices: list[dict[str, Any]] = []
        self.changed = threading.Condition()

    def set(self, addresses: list[str]) -> None:
        endpoints = [{"addresses": [a.rsplit(":", 1)[0]], "conditions": {"ready": True}}
                     for a in addresses]  # fmt: skip
        port = int(addresses[0].rsplit(":", 1)[1]) if addresses else 0
        with self.changed:
            self.slices = [{"ports": [{"name": "grpc", "port": port}], "endpoints": endpoints}]
            self.changed.notify_all()

    def items(self) -> list[dict[str, Any]]:
        with self.changed:
            return list(self.slices)

    def wait(self, timeout_s: float) -> None:
        with self.changed:
            self.changed.wait(timeout_s)

    def stop(self) -> None:
        return None


@pytest.fixture
def pool() -> Iterator[tuple[list[ScriptedStage], list[StageServicer], list[Server], GivenSlices]]:
    # Two pods: the same port on two loopback addresses, as pods have one IP each.
    stages = [ScriptedStage("export", steps=40, step_s=0.05) for _ in range(2)]
    servicers = [StageServicer("export", s, capacity=2, keepalive_s=0.2) for s in stages]
    first = stage_service(servicers[0]).start(host="127.0.3.1", port=0)
    second = stage_service(servicers[1]).start(host="127.0.3.2", port=first.port)
    slices = GivenSlices()
    slices.set([f"127.0.3.1:{first.port}", f"127.0.3.2:{first.port}"])
    yield stages, servicers, [first, second], slices
    for server in (first, second):
        server.stop(0)


def job(task_id: str) -> StageJob:
    return StageJob(task_id, "p", "{}", {}, "pipelines/p/export/", 1)


def consume(call: Any) -> StageOutcome:
    for item in call:
        if isinstance(item, StageOutcome):
            return item
    raise AssertionError("no outcome")


def test_attempts_go_to_the_least_busy_ready_pod(pool) -> None:
    stages, _, servers, slices = pool
    provider = PoolProvider("export", "ts-converter", 2, slices, Channels())
    assert provider.capacity() == 4  # two Ready pods, two tasks each
    calls = [provider.run(job(f"p.export.{n}"), reattach=False) for n in (1, 2)]
    threads = [threading.Thread(target=consume, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [len(s.calls) for s in stages] == [1, 1]
    slices.set([f"127.0.3.2:{servers[0].port}"])
    assert provider.capacity() == 2


def test_a_restarted_controller_reattaches_to_the_pod_that_runs_the_task(pool) -> None:
    stages, servicers, _servers, slices = pool
    # Before the restart: the task was placed on the second pod.
    servicers[1].tasks.start_or_attach(
        "p.export.1", lambda sink: stages[1](job("p.export.1"), sink)
    )
    provider = PoolProvider("export", "ts-converter", 2, slices, Channels())
    outcome = consume(provider.run(job("p.export.1"), reattach=True))
    assert outcome.summary == {"attempt": 1}
    assert stages[0].calls == []  # not started again on the first (least busy) pod
    assert stages[1].calls == ["p.export.1"]


def test_reattach_starts_the_task_when_no_pod_has_it(pool) -> None:
    stages, _, _, slices = pool
    provider = PoolProvider("export", "ts-converter", 2, slices, Channels())
    consume(provider.run(job("p.export.2"), reattach=True))
    assert sum(len(s.calls) for s in stages) == 1


def test_a_pod_leaving_the_pool_mid_stage_is_unavailable(pool) -> None:
    _stages, _, servers, slices = pool
    provider = PoolProvider("export", "ts-converter", 2, slices, Channels())
    call = provider.run(job("p.export.3"), reattach=False)
    iterator = iter(call)
    placed = next(iterator)
    address = placed.message.split()[2]
    remaining = [f"127.0.3.{n}:{servers[0].port}" for n in (1, 2)]
    remaining.remove(address)
    time.sleep(0.2)
    slices.set(remaining)  # the pod's endpoint is gone (deleted, not Ready)
    with pytest.raises(StageFailure) as caught:
        for _ in iterator:
            pass
    assert caught.value.code == "UNAVAILABLE" and caught.value.retryable
    assert f"pod {address} left the ts-converter pool" in caught.value.message


def test_no_ready_pod_is_unavailable(pool) -> None:
    _, _, _, slices = pool
    slices.set([])
    provider = PoolProvider("export", "ts-converter", 1, slices, Channels())
    assert provider.capacity() == 0
    with pytest.raises(StageFailure, match="no Ready pod behind service ts-converter"):
        consume(provider.run(job("p.export.4"), reattach=False))
