"""tuneship on Kubernetes, as the chart installs it, against the shared fake API server.

Every process is real: the controller (``tuneship serve controller`` with the chart's
environment), each training attempt's Job pod (``tuneship serve trainer --once``) and the
pools' pods, started by the fake kubelet on their own loopback IPs. The requests the
controller makes are checked against the Role the chart renders.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneship.client import PipelineClient, PipelineInfo
from tuneship.controller.providers.kube import TASK_ANNOTATION
from tuneship.testing.kubecluster import ChartCluster, deploy_chart, write_spec

pytestmark = pytest.mark.e2e

REQUESTED: set[tuple[str, str, str]] = set()
"""Every (apiGroup, resource, verb) the controller asked for, over this module's tests."""


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    started: list[ChartCluster] = []

    def factory(**kwargs) -> ChartCluster:
        cluster = deploy_chart(tmp_path / f"cluster{len(started)}", **kwargs)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        REQUESTED.update(cluster.kube.requested_rules("controller"))
        denied = [r for r in cluster.kube.requests if r.token == "controller" and not r.allowed]
        cluster.stop()
        assert denied == [], f"the chart's Role refused the controller: {denied}"
        assert cluster.kube.controller_errors == []


def wait(
    client: PipelineClient, pid: str, done, timeout_s: float = 300, what: str = ""
) -> PipelineInfo:
    deadline = time.monotonic() + timeout_s
    info = client.get(pid)
    while not done(info):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid} never reached {what or done}: {info}")
        time.sleep(0.25)
        info = client.get(pid)
    return info


def finished(info: PipelineInfo) -> bool:
    return info.phase in ("succeeded", "failed", "cancelled")


def jobs_of(cluster: ChartCluster, stage: str) -> list[dict]:
    return [j for j in cluster.kube.jobs() if j["metadata"]["name"].startswith(f"ts-{stage}-")]


def test_a_pipeline_runs_through_job_pods_and_pools_and_waits_in_the_kueue_queue(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory(values={"kueue": {"queueName": "gpu"}}, kueue_hold=True)
    client = cluster.start_controller()
    spec = write_spec(tmp_path / "k8s-pipeline.yaml", tiny_chatml, sample_data / "pirate")
    started = time.monotonic()
    pid = client.submit(spec).id

    queued = wait(client, pid, lambda i: i.stage("train").shown_phase == "queued", 60, "queued")
    train = queued.stage("train")
    assert "Kueue has not admitted job ts-train-" in train.waiting
    assert "insufficient quota" in train.waiting  # Kueue's own reason, from its event
    [job] = jobs_of(cluster, "train")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.1"
    time.sleep(3)  # longer than nothing: no heartbeat timeout while queued
    assert client.get(pid).stage("train").attempts == 1
    cluster.kube.admit(job["metadata"]["name"])

    done = wait(client, pid, finished, 600)
    seconds = time.monotonic() - started
    assert done.phase == "succeeded", (done, cluster.controller_log()[-3000:])
    print(f"\npipeline through Job pods and pools: {seconds:.1f}s")
    assert [s.attempts for s in done.stages] == [1, 1, 1, 1]
    events = [e.text for e in client.watch(pid) if e.kind == "transition"]
    assert any(t.startswith("train queued: Kueue has not admitted") for t in events)
    # One Job for the one attempt; its pod served exactly that task and exited 0.
    [job] = jobs_of(cluster, "train")
    status = cluster.kube.get("Job", job["metadata"]["name"])["status"]
    assert status.get("succeeded") == 1
    # The published model answers through the controller (serving pool pod).
    pieces = client.chat_pieces(pid, [{"role": "user", "content": "Where is the treasure?"}])
    assert "".join(text for text, _ in pieces).strip()
