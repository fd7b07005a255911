"""A training on two nodes, as the chart installs tuneship, against the shared fake API.

The controller (a real ``tuneship serve controller``) creates a JobSet, which the fake
API checks against JobSet's published schema; the fake JobSet controller makes an
Indexed Job of two pods, and the fake kubelet runs each as a real ``tuneship serve
trainer --once`` on its own loopback address: node 0 serves the stage to the
controller, node 1 follows it (``TUNESHIP_STAGE_JOB``), and their torchrun ranks meet
over gloo at node 0's JobSet hostname (the fake resolves it to node 0's address).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.controller.providers.kube import TASK_ANNOTATION, task_digest
from tuneship.testing.helm import render
from tuneship.testing.kube.crds import schema_causes
from tuneship.testing.kube.trainjobs import torch_distributed_runtime
from tuneship.testing.kubecluster import (
    TEST_VALUES,
    TUNESHIP,
    ChartCluster,
    Followed,
    deploy_chart,
    free_port,
    merged,
    write_spec,
)

pytestmark = pytest.mark.e2e

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def start(root: Path, kind: str, queue: str | None = None) -> ChartCluster:
    """The chart with training on CPU (no GPUs to count) and ``kind`` for multi-node;
    ``queue``: queued in Kueue, which holds everything until the test admits it."""
    multi = {"kind": kind, "rendezvousPort": free_port()}
    values: dict = {"trainer": {"gpu": {"count": 0}, "multiNode": multi}}
    if queue:
        values["kueue"] = {"queueName": queue}
    # A TrainJob's runtime container runs `tuneship` as its command: find it on PATH.
    path = f"{Path(TUNESHIP).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    running = deploy_chart(root, values, controller_env={"TUNESHIP_RETRY_BACKOFF_S": "0.5"},
                           pod_env={"PATH": path}, kueue_hold=bool(queue))  # fmt: skip
    if kind == "trainjob":
        running.kube.apply([torch_distributed_runtime()])
    return running


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ChartCluster]:
    running = start(tmp_path / "cluster", "jobset")
    yield running
    stop(running)


REQUESTED: set[tuple[str, str, str]] = set()
"""Every (apiGroup, resource, verb) the controller asked for, over this module's tests."""


def stop(running: ChartCluster) -> None:
    REQUESTED.update(running.kube.requested_rules("controller"))
    denied = [r for r in running.kube.requests if r.token == "controller" and not r.allowed]
    errors = list(running.kube.controller_errors)
    running.stop()
    assert denied == [], f"the chart's Role refused the controller: {denied}"
    assert errors == []


def two_node_spec(tmp_path: Path, tiny_chatml: Path, sample_data: Path, steps: int) -> Path:
    return write_spec(
        tmp_path / f"two-nodes-{steps}.yaml", tiny_chatml, sample_data / "pirate",
        train={"nodes": 2, "devices": 1, "max_steps": steps, "save_steps": 4},
    )  # fmt: skip


def jobsets(cluster: ChartCluster) -> list[dict]:
    return cluster.kube.objects("jobsets")


def node_pods(cluster: ChartCluster, task_id: str) -> dict[str, dict]:
    """The pods of the training of ``task_id``, by node rank."""
    label = f"tuneship.dev/task={task_digest(task_id)}"
    return {p["metadata"]["annotations"][COMPLETION_INDEX]: p for p in cluster.kube.pods(label)}


@pytest.fixture
def queued_cluster(tmp_path: Path) -> Iterator[ChartCluster]:
    running = start(tmp_path / "cluster", "jobset", queue="gpu")
    yield running
    stop(running)


def test_a_two_node_training_runs_as_a_jobset_and_node_1_follows_node_0(
    queued_cluster: ChartCluster, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = queued_cluster
    client = cluster.start_controller()
    pid = client.submit(two_node_spec(tmp_path, tiny_chatml, sample_data, 8)).id
    followed = Followed(client, pid)
    # Kueue queues the whole JobSet: created suspended, it has no running pod yet.
    # Kueue's own reason, from its event (asked for every 15 s while queued).
    followed.wait_for(lambda e: "Kueue has not admitted JobSet ts-train-" in e.text
                      and "insufficient quota" in e.text, 60, "queued")  # fmt: skip
    [jobset] = jobsets(cluster)
    assert jobset["spec"]["suspend"] is True
    assert all(j["spec"]["suspend"] for j in cluster.kube.jobs())
    cluster.kube.admit(jobset["metadata"]["name"], kind="JobSet")
    followed.wait_for(lambda e: e.stage == "train" and "succeeded" in e.text, 300, "train done")
    client.cancel(pid)  # the rest of the pipeline is the one-node tests' business

    [jobset] = jobsets(cluster)
    assert jobset["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.1"
    assert schema_causes(jobset) == []  # as stored; the fake also refused nothing on create
    assert cluster.kube.get("NetworkPolicy", jobset["metadata"]["name"]) is not None
    pods = node_pods(cluster, f"{pid}.train.1")
    assert sorted(pods) == ["0", "1"]
    follower = cluster.kube.pod_log(pods["1"]["metadata"]["name"])
    assert "following node 0" in follower, follower[-2000:]
    texts = [e.text for e in followed.items]
    assert any("running on 2 nodes: JobSet" in t for t in texts), texts
    info = client.get(pid)
    assert info.stage("train").attempts == 1


@pytest.mark.slow
def test_a_node_killed_mid_training_fails_the_attempt_and_the_retry_resumes(
    cluster: ChartCluster, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    client = cluster.start_controller()
    pid = client.submit(two_node_spec(tmp_path, tiny_chatml, sample_data, 40)).id
    followed = Followed(client, pid)
    followed.wait_for(lambda e: e.text.startswith("checkpoint at step 8 saved to the store"),
                      300, "a stored checkpoint")  # fmt: skip
    first = node_pods(cluster, f"{pid}.train.1")
    cluster.kube.crash(first["1"]["metadata"]["name"])  # node 1 dies (SIGKILL)
    followed.wait_for(lambda e: e.stage == "train" and "succeeded" in e.text, 600, "train done")
    client.cancel(pid)

    texts = [e.text for e in followed.items]
    failed = [t for t in texts if "attempt 1 failed (UNAVAILABLE)" in t]
    assert failed and "node 1 of JobSet" in failed[0], texts
    resumed = [t for t in texts if t.startswith("resuming from the stored checkpoint at step")]
    assert resumed and int(resumed[0].split()[-1]) >= 8, texts
    assert client.get(pid).stage("train").attempts == 2
    # The failed attempt's JobSet is gone (no GPU held); the retry's remains.
    cluster.kube.wait_for(lambda: len(jobsets(cluster)) == 1, 30, "the first JobSet deleted")
    [jobset] = jobsets(cluster)
    assert jobset["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.2"


@pytest.mark.slow
def test_a_two_node_training_runs_as_a_kubeflow_trainjob(
    tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = start(tmp_path / "cluster", "trainjob")
    try:
        client = cluster.start_controller()
        pid = client.submit(two_node_spec(tmp_path, tiny_chatml, sample_data, 8)).id
        followed = Followed(client, pid)
        followed.wait_for(lambda e: e.stage == "train" and "succeeded" in e.text, 300, "train")
        client.cancel(pid)
        [trainjob] = cluster.kube.objects("trainjobs")
        assert trainjob["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.1"
        assert schema_causes(trainjob) == []
        # The runtime (here the fake Trainer) made the JobSet and set the rendezvous.
        [jobset] = jobsets(cluster)
        assert jobset["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
        pods = node_pods(cluster, f"{pid}.train.1")
        assert sorted(pods) == ["0", "1"]
        assert pods["1"]["spec"]["containers"][0]["name"] == "node"
        follower = cluster.kube.pod_log(pods["1"]["metadata"]["name"], "node")
        assert "following node 0" in follower, follower[-2000:]
        assert client.get(pid).stage("train").attempts == 1
    finally:
        stop(cluster)


@pytest.mark.slow
def test_a_controller_killed_mid_training_reattaches_to_the_same_jobset(
    cluster: ChartCluster, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    client = cluster.start_controller()
    pid = client.submit(two_node_spec(tmp_path, tiny_chatml, sample_data, 40)).id
    Followed(client, pid).wait_for(
        lambda e: e.kind == "progress" and e.data.get("step", 0) >= 4, 300, "training"
    )
    cluster.kill_controller()  # SIGKILL: the JobSet and its pods carry on
    client = cluster.start_controller()
    followed = Followed(client, pid)
    followed.wait_for(lambda e: e.stage == "train" and "succeeded" in e.text, 600, "train done")
    client.cancel(pid)
    assert client.get(pid).stage("train").attempts == 1
    [jobset] = jobsets(cluster)  # re-attached (AlreadyExists), not a second JobSet
    assert jobset["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.1"
    creates = [r for r in cluster.kube.requests if r.verb == "create" and r.resource == "jobsets"]
    assert [r.allowed for r in creates] == [True, True]  # the second one answered 409


def test_the_roles_multi_node_verbs_are_those_the_controller_uses() -> None:
    """Run with the module: the tests above drive the multi-node paths of the provider."""
    assert REQUESTED, "run this module's tests together: they record the requests"
    multi_node = {("jobset.x-k8s.io", "jobsets"), ("networking.k8s.io", "networkpolicies")}
    role = render(merged(TEST_VALUES, {"trainer": {"multiNode": {"kind": "jobset"}}}))
    granted = {
        (group, resource, verb)
        for rule in role.get("Role", "controller")["rules"]
        for group in rule["apiGroups"] for resource in rule["resources"]
        for verb in rule["verbs"] if (group, resource) in multi_node
    }  # fmt: skip
    requested = {r for r in REQUESTED if r[:2] in multi_node}
    print(f"\nrequested: {sorted(requested)}\ngranted:   {sorted(granted)}")
    assert requested <= granted
    # Re-attaching (get) and deleting a failed attempt's JobSet are the slow tests' paths.
    assert granted - requested <= {("jobset.x-k8s.io", "jobsets", "get"),
                                   ("jobset.x-k8s.io", "jobsets", "delete")}  # fmt: skip
