"""The fake Kubernetes API, driven by the real ``kubernetes`` client, Helm and processes.

What a controller relies on: CRUD with the documented errors (409/404/422/403/410),
list+watch from a resourceVersion, RBAC and the request log, Jobs whose pods are real
processes on their own loopback IPs (Ready through a gRPC health probe, Complete,
podFailurePolicy, eviction, OOM, unschedulable, Kueue), Deployments behind a Service
and their EndpointSlices, Helm's ``lookup``, and nothing left running after ``stop()``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tuneship.testing.kube import (
    JOB_NAME_LABEL,
    JOB_UID_LABEL,
    NODE_NAME,
    QUEUE_LABEL,
    SERVICE_NAME_LABEL,
    FakeKube,
    Kubelet,
)

pytestmark = pytest.mark.integration

NS = "tuneship"

# A stage worker in miniature: serves gRPC health on $(POD_IP):50051, exits with a code.
HEALTH_WORKER = """
import signal, sys, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
host, seconds, code, drain = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port(f"{host}:50051")
server.start()
def drained(*_):  # a server finishing its calls: the pod stays Terminating a while
    time.sleep(drain)
    server.stop(0)
    sys.exit(0)
if drain:
    signal.signal(signal.SIGTERM, drained)
print("serving on", host, flush=True)
time.sleep(seconds)
server.stop(0)
sys.exit(code)
"""

# The contract's controller Role (docs/kubernetes.md), nothing else.
CONTROLLER_ROLE: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
    "metadata": {"name": "tuneship-controller", "namespace": NS},
    "rules": [
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ],
}  # fmt: skip


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(kubelet=Kubelet(grace_cap_s=2.0, restart_backoff_s=0.2)) as running:
        yield running
        assert running.controller_errors == []


def core(kube: FakeKube, token: str = "admin") -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client(token))


def batch(kube: FakeKube, token: str = "admin") -> client.BatchV1Api:
    return client.BatchV1Api(kube.api_client(token))


def worker_job(name: str, argv: list[str], **spec: Any) -> dict[str, Any]:
    """A Job shaped like the chart's template: container ``worker``, port ``grpc``."""
    container = {
        "name": "worker", "image": "tuneship-train:test", "command": argv,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "grpc", "containerPort": 50051}],
    }  # fmt: skip
    labels = spec.pop("labels", {})
    resources = spec.pop("resources", None)
    if resources:
        container["resources"] = resources
    if spec.pop("probe", False):
        container["readinessProbe"] = {"grpc": {"port": 50051}, "periodSeconds": 1}
    pod_spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 30,
                "containers": [container]}  # fmt: skip
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backoffLimit": 0, "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": "worker", "operator": "In", "values": [3]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]}, "template": {"spec": pod_spec}, **spec},
    }  # fmt: skip


def health_worker(seconds: float, code: int = 0, drain_s: float = 0.0) -> list[str]:
    """Serves health on the pod's IP for ``seconds``, then exits ``code``; with
    ``drain_s`` it keeps serving that long after SIGTERM (else SIGTERM ends it at once)."""
    return [sys.executable, "-c", HEALTH_WORKER, "$(POD_IP)", str(seconds), str(code),
            str(drain_s)]  # fmt: skip


def sleeper(seconds: float = 60) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for found in (obj or {}).get("status", {}).get("conditions") or []:
        if found["type"] == kind and found["status"] == "True":
            return dict(found)
    return None


def one_pod(kube: FakeKube, selector: str) -> dict[str, Any] | None:
    pods = kube.pods(selector)
    return pods[0] if len(pods) == 1 else None


def test_crud_and_the_documented_errors(kube: FakeKube) -> None:
    api = core(kube)
    created = api.create_namespaced_config_map(NS, {"metadata": {"generateName": "cfg-",
                                                                 "labels": {"a": "1"}},
                                                    "data": {"k": "v"}})  # fmt: skip
    name = created.metadata.name
    assert name.startswith("cfg-") and len(name) == len("cfg-") + 5
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert int(created.metadata.resource_version) > 0 and created.metadata.generation == 1
    assert api.read_namespaced_config_map(name, NS).data == {"k": "v"}
    listed = api.list_namespaced_config_map(NS, label_selector="a=1")
    assert [item.metadata.name for item in listed.items] == [name]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)

    with pytest.raises(ApiException) as exists:
        api.create_namespaced_config_map(NS, {"metadata": {"name": name}})
    body = json.loads(exists.value.body)
    assert (exists.value.status, body["reason"], body["kind"]) == (409, "AlreadyExists", "Status")
    assert body["message"] == f'configmaps "{name}" already exists'

    updated = api.replace_namespaced_config_map(
        name,
        NS,
        {
            "metadata": {"name": name, "resourceVersion": created.metadata.resource_version},
            "data": {"k": "2"},
        },
    )
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_config_map(
            name,
            NS,
            {
                "metadata": {"name": name, "resourceVersion": created.metadata.resource_version},
                "data": {},
            },
        )
    assert (stale.value.status, json.loads(stale.value.body)["reason"]) == (409, "Conflict")

    api.delete_namespaced_config_map(name, NS)
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_config_map(name, NS)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == f'configmaps "{name}" not found'

    with pytest.raises(ApiException) as invalid:
        api.create_namespaced_config_map(
            NS, {"metadata": {"name": "x", "labels": {"task": "a/b c"}}}
        )
    assert (invalid.value.status, json.loads(invalid.value.body)["reason"]) == (422, "Invalid")
    secret = api.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"t": "x"}})
    assert secret.data == {"t": "eA=="}  # stringData is folded into base64 data


def test_patch_scales_a_deployment_and_bumps_generation(kube: FakeKube) -> None:
    apps = client.AppsV1Api(kube.api_client("admin"))
    apps.create_namespaced_deployment(NS, deployment("pool", replicas=0))
    patched = apps.patch_namespaced_deployment(
        "pool", NS, {"spec": {"replicas": 0, "paused": True}}
    )
    assert patched.spec.paused and patched.metadata.generation == 2
    scaled = apps.patch_namespaced_deployment(
        "pool", NS, [{"op": "replace", "path": "/spec/paused", "value": False}]
    )
    assert scaled.spec.paused is False and scaled.metadata.generation == 3


def test_watch_from_a_resource_version_sends_only_later_matching_changes(kube: FakeKube) -> None:
    api = core(kube)
    api.create_namespaced_config_map(NS, {"metadata": {"name": "before", "labels": {"w": "y"}}})
    rv = api.list_namespaced_config_map(NS).metadata.resource_version
    api.create_namespaced_config_map(NS, {"metadata": {"name": "other", "labels": {"w": "n"}}})
    api.create_namespaced_config_map(NS, {"metadata": {"name": "a", "labels": {"w": "y"}}})
    api.patch_namespaced_config_map("a", NS, {"data": {"k": "1"}})
    api.patch_namespaced_config_map("other", NS, {"metadata": {"labels": {"w": "y"}}})
    api.patch_namespaced_config_map("a", NS, {"metadata": {"labels": {"w": "n"}}})
    api.delete_namespaced_config_map("other", NS)

    seen = [(event["type"], event["object"].metadata.name) for event in watch.Watch().stream(
        api.list_namespaced_config_map, NS, label_selector="w=y", resource_version=rv,
        timeout_seconds=1)]  # fmt: skip
    # Entering the selector is ADDED, leaving it is DELETED: the watch cache's view.
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "other"), ("DELETED", "a"),
                    ("DELETED", "other")]  # fmt: skip

    # Without a resourceVersion: the current objects as ADDED, then live changes.
    stream = watch.Watch()
    events = stream.stream(api.list_namespaced_config_map, NS, timeout_seconds=3)
    first = next(events)
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "a")
    api.create_namespaced_config_map(NS, {"metadata": {"name": "live"}})
    names = [next(events)["object"].metadata.name for _ in range(2)]
    assert names == ["before", "live"]
    stream.stop()


def test_watch_older_than_the_history_raises_410(kube: FakeKube) -> None:
    api = core(kube)
    rv = api.list_namespaced_config_map(NS).metadata.resource_version
    api.create_namespaced_config_map(NS, {"metadata": {"name": "gone-by"}})
    kube.compact()
    with pytest.raises(ApiException) as expired:
        # No timeout: the client retries once from the same version, then gives up.
        for _ in watch.Watch().stream(api.list_namespaced_config_map, NS, resource_version=rv):
            pass
    assert expired.value.status == 410
    assert "Expired: too old resource version" in str(expired.value.reason)
    # A fresh list gives a version a watch can start from again.
    fresh = api.list_namespaced_config_map(NS).metadata.resource_version
    api.create_namespaced_config_map(NS, {"metadata": {"name": "after"}})
    got = [
        e["object"].metadata.name
        for e in watch.Watch().stream(
            api.list_namespaced_config_map, NS, resource_version=fresh, timeout_seconds=1
        )
    ]
    assert got == ["after"]


def test_bounded_history_and_bookmarks() -> None:
    with FakeKube(history=3) as small:
        api = core(small)
        rv = api.list_namespaced_config_map(NS).metadata.resource_version
        for index in range(5):
            api.create_namespaced_config_map(NS, {"metadata": {"name": f"c{index}"}})
        raw = api.list_namespaced_config_map(
            NS, watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False
        )
        lines = [json.loads(line) for line in raw.read().decode().splitlines()]
        assert lines == [{"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"too old resource version: {rv} ({int(rv) + 3})", "reason": "Expired",
            "code": 410}}]  # fmt: skip
        now = api.list_namespaced_config_map(NS).metadata.resource_version
        raw = api.list_namespaced_config_map(NS, watch=True, resource_version=now,
                                             allow_watch_bookmarks=True, timeout_seconds=2,
                                             _preload_content=False)  # fmt: skip
        kinds = {json.loads(line)["type"] for line in raw.read().decode().splitlines()}
        assert kinds == {"BOOKMARK"}


def test_rbac_denies_what_the_role_lacks_and_logs_every_request() -> None:
    with FakeKube(role=CONTROLLER_ROLE) as kube:
        jobs = batch(kube, "controller")
        jobs.create_namespaced_job(NS, worker_job("ts-train-0", sleeper()))
        assert jobs.read_namespaced_job("ts-train-0", NS).metadata.name == "ts-train-0"
        with pytest.raises(ApiException) as patch:
            jobs.patch_namespaced_job("ts-train-0", NS, {"spec": {"suspend": True}})
        assert patch.value.status == 403
        assert json.loads(patch.value.body)["message"] == (
            'jobs.batch "ts-train-0" is forbidden: User '
            '"system:serviceaccount:tuneship:controller" cannot patch resource "jobs" in API '
            'group "batch" in the namespace "tuneship"'
        )
        with pytest.raises(ApiException) as secrets:
            core(kube, "controller").list_namespaced_secret(NS)
        assert json.loads(secrets.value.body)["reason"] == "Forbidden"
        with pytest.raises(ApiException) as other_namespace:
            core(kube, "controller").list_namespaced_pod("default")
        assert other_namespace.value.status == 403
        core(kube, "admin").list_namespaced_secret(NS)  # admin is never checked
        assert kube.requested_rules("controller") == {
            ("batch", "jobs", "create"), ("batch", "jobs", "get"), ("batch", "jobs", "patch"),
            ("", "secrets", "list"), ("", "pods", "list"),
        }  # fmt: skip
        denied = [r for r in kube.requests if not r.allowed]
        assert [(r.verb, r.resource, r.namespace, r.name) for r in denied] == [
            ("patch", "jobs", NS, "ts-train-0"), ("list", "secrets", NS, ""),
            ("list", "pods", "default", ""),
        ]  # fmt: skip


def test_job_pod_serves_grpc_on_its_own_ip_becomes_ready_and_completes(kube: FakeKube) -> None:
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-ok", health_worker(2.5), probe=True))
    selector = f"{JOB_NAME_LABEL}=ts-train-ok"
    ready = kube.wait_for(lambda: (p := one_pod(kube, selector)) and condition(p, "Ready") and p,
                          timeout_s=20, what="the pod to be Ready")  # fmt: skip
    meta, status = ready["metadata"], ready["status"]
    job = kube.get("Job", "ts-train-ok")
    assert (
        job
        and meta["name"].startswith("ts-train-ok-")
        and len(meta["name"]) == len("ts-train-ok-") + 5
    )
    assert (
        meta["labels"][JOB_UID_LABEL] == job["metadata"]["uid"] == meta["labels"]["controller-uid"]
    )
    assert meta["labels"]["job-name"] == "ts-train-ok"
    assert meta["ownerReferences"][0]["kind"] == "Job"
    assert ready["spec"]["nodeName"] == NODE_NAME
    assert status["podIP"].startswith("127.0.") and status["podIP"] != "127.0.0.1"
    assert status["containerStatuses"][0]["ready"] is True
    assert kube.wait_for(
        lambda: (kube.get("Job", "ts-train-ok") or {}).get("status", {}).get("ready") == 1, 5
    )
    done = kube.wait_for(lambda: condition(kube.get("Job", "ts-train-ok"), "Complete") and
                         kube.get("Job", "ts-train-ok"), timeout_s=20)  # fmt: skip
    assert done["status"]["succeeded"] == 1 and done["status"]["completionTime"]
    pod = core(kube).read_namespaced_pod(meta["name"], NS)
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    log = core(kube, "admin").read_namespaced_pod_log(meta["name"], NS, container="worker")
    assert f"serving on {status['podIP']}" in log
    assert core(kube).read_namespaced_pod_log(meta["name"], NS, tail_lines=0) == ""


def test_exit_code_3_fails_the_job_through_the_pod_failure_policy(kube: FakeKube) -> None:
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-bad", health_worker(0, code=3)))
    failed = kube.wait_for(lambda: condition(kube.get("Job", "ts-train-bad"), "Failed"), 20)
    assert failed["reason"] == "PodFailurePolicy"
    assert "failed with exit code 3 matching FailJob rule at index 0" in failed["message"]
    job = kube.get("Job", "ts-train-bad")
    assert job and job["status"]["failed"] == 1 and condition(job, "FailureTarget")
    (pod,) = kube.pods(f"{JOB_NAME_LABEL}=ts-train-bad")  # no replacement
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "finalizers" not in pod["metadata"]  # counted, then released


def test_eviction_is_ignored_by_the_policy_and_a_replacement_runs(kube: FakeKube) -> None:
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-evict", sleeper()))
    selector = f"{JOB_NAME_LABEL}=ts-train-evict"
    first = kube.wait_for(lambda: (p := one_pod(kube, selector)) and
                          p["status"].get("phase") == "Running" and p, 20)  # fmt: skip
    kube.evict(first["metadata"]["name"], reason="PreemptionByScheduler")

    def replaced() -> dict[str, Any] | None:
        pods = [
            p for p in kube.pods(selector) if p["metadata"]["name"] != first["metadata"]["name"]
        ]
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    kube.wait_for(replaced, 20, "a replacement pod")
    job = kube.get("Job", "ts-train-evict")
    assert job and not condition(job, "Failed") and job["status"].get("failed", 0) == 0
    old = kube.get("Pod", first["metadata"]["name"])
    assert old is None  # evicted pods are deleted once the Job has counted them
    events = [e for e in kube.events("ts-train-evict") if e["reason"] == "SuccessfulCreate"]
    assert len(events) == 2


def test_evicted_pod_reports_disruption_and_failure(kube: FakeKube) -> None:
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-watch", sleeper()))
    selector = f"{JOB_NAME_LABEL}=ts-train-watch"
    pods = core(kube)
    rv = pods.list_namespaced_pod(NS).metadata.resource_version
    first = kube.wait_for(lambda: (p := one_pod(kube, selector)) and
                          p["status"].get("phase") == "Running" and p, 20)  # fmt: skip
    name = first["metadata"]["name"]
    kube.evict(name)
    last = None
    for event in watch.Watch().stream(
        pods.list_namespaced_pod,
        NS,
        resource_version=rv,
        field_selector=f"metadata.name={name}",
        timeout_seconds=10,
    ):
        last = event["object"]
        if event["type"] == "DELETED":
            break
    assert last is not None and last.status.phase == "Failed"
    disruption = [c for c in last.status.conditions if c.type == "DisruptionTarget"]
    assert disruption[0].reason == "PreemptionByScheduler"
    terminated = last.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 143)  # SIGTERM


def test_oom_killed_container(kube: FakeKube) -> None:
    job = worker_job("ts-train-oom", sleeper())
    job["spec"].pop("podFailurePolicy")
    batch(kube).create_namespaced_job(NS, job)
    selector = f"{JOB_NAME_LABEL}=ts-train-oom"
    pod = kube.wait_for(lambda: (p := one_pod(kube, selector)) and
                        p["status"].get("phase") == "Running" and p, 20)  # fmt: skip
    kube.oom_kill(pod["metadata"]["name"])
    failed = kube.wait_for(lambda: condition(kube.get("Job", "ts-train-oom"), "Failed"), 20)
    assert failed["reason"] == "BackoffLimitExceeded"
    state = core(kube).read_namespaced_pod(pod["metadata"]["name"], NS).status
    assert state.phase == "Failed"
    terminated = state.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_unschedulable_until_a_gpu_is_there(kube: FakeKube) -> None:
    kube.gpus = 0
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-gpu", sleeper(), resources=gpu))
    selector = f"{JOB_NAME_LABEL}=ts-train-gpu"
    pod = kube.wait_for(
        lambda: (p := one_pod(kube, selector)) and p["status"].get("conditions") and p, 10
    )
    (scheduled,) = pod["status"]["conditions"]
    assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == (
        "PodScheduled", "False", "Unschedulable")  # fmt: skip
    assert scheduled["message"] == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    events = core(kube, "admin").list_namespaced_event(
        NS, field_selector=f"involvedObject.name={pod['metadata']['name']},reason=FailedScheduling"
    )
    assert [e.message for e in events.items] == [scheduled["message"]]
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    kube.gpus = 1
    kube.wait_for(lambda: (kube.get("Pod", pod["metadata"]["name"]) or {}).get("status", {})
                  .get("phase") == "Running", 20)  # fmt: skip
    # The one GPU is now taken: a second GPU Job waits for it.
    batch(kube).create_namespaced_job(NS, worker_job("ts-train-gpu2", sleeper(), resources=gpu))
    second = kube.wait_for(lambda: one_pod(kube, f"{JOB_NAME_LABEL}=ts-train-gpu2"), 10)
    time.sleep(0.5)
    assert kube.get("Pod", second["metadata"]["name"])["status"]["phase"] == "Pending"  # type: ignore[index]


def test_kueue_hold_keeps_the_job_suspended_until_admitted(kube: FakeKube) -> None:
    kube.kueue_hold = True
    labels = {QUEUE_LABEL: "gpu-queue"}
    job = worker_job("ts-train-queued", health_worker(0.5), labels=labels)
    job["spec"]["suspend"] = True  # what the controller sends; Kueue's webhook would too
    batch(kube).create_namespaced_job(NS, job)
    pending = kube.wait_for(lambda: kube.events("ts-train-queued", reason="Pending"), 10)
    assert "insufficient quota for nvidia.com/gpu" in pending[0]["message"]
    suspended = condition(kube.get("Job", "ts-train-queued"), "Suspended")
    assert suspended and suspended["reason"] == "JobSuspended"
    time.sleep(0.3)
    assert kube.pods(f"{JOB_NAME_LABEL}=ts-train-queued") == []
    kube.admit("ts-train-queued")
    kube.wait_for(lambda: condition(kube.get("Job", "ts-train-queued"), "Complete"), 20)
    final = kube.get("Job", "ts-train-queued")
    assert final and final["spec"]["suspend"] is False
    resumed = [c for c in final["status"]["conditions"] if c["type"] == "Suspended"]
    assert resumed[0]["status"] == "False" and resumed[0]["reason"] == "JobResumed"


def test_deleting_a_job_propagates_as_asked(kube: FakeKube) -> None:
    jobs = batch(kube)
    names = ("ts-orphan", "ts-background", "ts-foreground")
    for name in names:
        jobs.create_namespaced_job(NS, worker_job(name, sleeper()))
    for name in names:
        kube.wait_for(lambda name=name: (p := one_pod(kube, f"{JOB_NAME_LABEL}={name}")) and
                      p["status"].get("phase") == "Running", 20)  # fmt: skip
    jobs.delete_namespaced_job("ts-orphan", NS)  # batch/v1 default: Orphan
    jobs.delete_namespaced_job("ts-background", NS, propagation_policy="Background")
    assert kube.get("Job", "ts-background") is None  # gone at once, its pod follows
    held = jobs.delete_namespaced_job("ts-foreground", NS, propagation_policy="Foreground")
    # The Job itself comes back (the client cannot read it as a V1Status): it waits.
    assert held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert held["metadata"]["deletionTimestamp"]
    kube.wait_for(lambda: kube.get("Job", "ts-foreground") is None, 20)
    assert kube.pods(f"{JOB_NAME_LABEL}=ts-foreground") == []
    kube.wait_for(lambda: kube.pods(f"{JOB_NAME_LABEL}=ts-background") == [], 20)
    (orphan,) = kube.pods(f"{JOB_NAME_LABEL}=ts-orphan")
    assert orphan["status"]["phase"] == "Running" and "ownerReferences" not in orphan["metadata"]
    assert kube.jobs() == []


def deployment(name: str, replicas: int, argv: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "worker", "image": "tuneship:test", "command": argv or sleeper(),
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "grpc", "containerPort": 50051}],
        "readinessProbe": {"grpc": {"port": 50051}, "periodSeconds": 1},
    }  # fmt: skip
    labels = {"app.kubernetes.io/component": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [container]}}},
    }  # fmt: skip


def test_deployment_behind_a_service_feeds_its_endpointslice(kube: FakeKube) -> None:
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "tuneship-converter"},
        "spec": {"clusterIP": "None", "selector": {"app.kubernetes.io/component": "conv"},
                 "ports": [{"name": "grpc", "port": 50051, "targetPort": "grpc"}]},
    }  # fmt: skip
    # The victim drains for 2 s after SIGTERM, so its Terminating endpoint outlives a
    # control-loop pass even on a loaded machine (one that exits at once can be gone
    # before the slice controller looks, as on a real cluster).
    kube.apply([service, deployment("conv", 2, health_worker(600, drain_s=2.0))])
    slices = client.DiscoveryV1Api(kube.api_client("admin"))
    selector = f"{SERVICE_NAME_LABEL}=tuneship-converter"

    def ready_addresses() -> list[str]:
        found = slices.list_namespaced_endpoint_slice(NS, label_selector=selector).items
        return sorted(ep.addresses[0] for s in found for ep in s.endpoints or []
                      if ep.conditions.ready)  # fmt: skip

    first = kube.wait_for(lambda: len(ready_addresses()) == 2 and ready_addresses(), 30)
    (eps,) = slices.list_namespaced_endpoint_slice(NS, label_selector=selector).items
    assert eps.metadata.name.startswith("tuneship-converter-") and eps.address_type == "IPv4"
    assert [(p.name, p.port) for p in eps.ports] == [("grpc", 50051)]
    assert {ep.target_ref.kind for ep in eps.endpoints} == {"Pod"}
    pods = kube.pods("app.kubernetes.io/component=conv")
    assert all(p["metadata"]["name"].startswith("conv-") for p in pods)
    assert {p["metadata"]["labels"]["pod-template-hash"] for p in pods} == {
        pods[0]["metadata"]["name"].split("-")[1]}  # fmt: skip

    rv = slices.list_namespaced_endpoint_slice(NS).metadata.resource_version
    victim = pods[0]
    kube.delete_pod(victim["metadata"]["name"])
    terminating = None
    for event in watch.Watch().stream(slices.list_namespaced_endpoint_slice, NS,
                                      label_selector=selector, resource_version=rv,
                                      timeout_seconds=10):  # fmt: skip
        for ep in event["object"].endpoints or []:
            if ep.target_ref.name == victim["metadata"]["name"] and ep.conditions.terminating:
                terminating = ep
        if terminating:
            break
    assert terminating is not None and terminating.conditions.ready is False
    later = kube.wait_for(lambda: (a := ready_addresses()) and len(a) == 2 and
                          victim["status"]["podIP"] not in a and a, 30)  # fmt: skip
    assert set(later) != set(first)
    apps = client.AppsV1Api(kube.api_client("admin"))
    kube.wait_for(
        lambda: apps.read_namespaced_deployment("conv", NS).status.ready_replicas == 2, 10
    )


def test_pods_bind_the_same_port_on_their_own_loopback_ips(kube: FakeKube) -> None:
    plain_server = [sys.executable, "-c", (
        "import os, socket, time; s = socket.socket(); "
        "s.bind((os.environ['POD_IP'], 50051)); s.listen(); time.sleep(60)")]  # fmt: skip
    pair = deployment("pair", 2, plain_server)
    container = pair["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = {"tcpSocket": {"port": "grpc"}}
    kube.apply([pair])

    def both_ready() -> list[dict[str, Any]] | None:
        pods = kube.pods("app.kubernetes.io/component=pair")
        return pods if len(pods) == 2 and all(condition(p, "Ready") for p in pods) else None

    pods = kube.wait_for(both_ready, 20)
    assert len({pod["status"]["podIP"] for pod in pods}) == 2
    for pod in pods:
        ip = pod["status"]["podIP"]
        assert ip != "127.0.0.1"
        with socket.create_connection((ip, 50051), timeout=2):
            pass
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_secrets_configmaps_and_the_kubelet_env_reach_the_process(
    kube: FakeKube, tmp_path: Path
) -> None:
    kube.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store"},
         "stringData": {"key": "sekret"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"MODE": "fast"}},
    ])  # fmt: skip
    script = (
        "import json, os, sys; keys = ['POD_IP', 'KEY', 'MODE', 'STORE', 'HOSTNAME', 'NAME']; "
        "print(json.dumps({k: os.environ.get(k) for k in keys})); print(json.dumps(sys.argv[1:]))"
    )
    job = worker_job("ts-env", [sys.executable, "-c", script, "--host", "$(POD_IP)"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] += [
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "key"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    container["envFrom"] = [{"configMapRef": {"name": "cfg"}}]
    with FakeKube(kubelet=Kubelet(env={"STORE": str(tmp_path)})) as own:
        own.apply(kube.objects("secrets") + kube.objects("configmaps"))
        batch(own).create_namespaced_job(NS, job)
        own.wait_for(lambda: condition(own.get("Job", "ts-env"), "Complete"), 20)
        (pod,) = own.pods(f"{JOB_NAME_LABEL}=ts-env")
        output = own.pod_log(pod["metadata"]["name"]).splitlines()
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert json.loads(output[0]) == {"POD_IP": ip, "KEY": "sekret", "MODE": "fast",
                               "STORE": str(tmp_path), "HOSTNAME": name, "NAME": name}  # fmt: skip
    assert json.loads(output[1]) == ["--host", ip]


def test_missing_image_and_secret_keep_the_pod_waiting(kube: FakeKube) -> None:
    job = worker_job("ts-waiting", sleeper())
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"].append(
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
    )
    batch(kube).create_namespaced_job(NS, job)
    pod = kube.wait_for(lambda: (p := one_pod(kube, f"{JOB_NAME_LABEL}=ts-waiting")) and
                        p["status"].get("containerStatuses") and p, 20)  # fmt: skip
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert (waiting["reason"], waiting["message"]) == (
        "CreateContainerConfigError",
        'secret "nope" not found',
    )
    with pytest.raises(ApiException) as not_started:
        core(kube).read_namespaced_pod_log(pod["metadata"]["name"], NS)
    assert (
        "is waiting to start: CreateContainerConfigError"
        in json.loads(not_started.value.body)["message"]
    )
    kube.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "nope"},
                 "stringData": {"k": "v"}}])  # fmt: skip
    kube.wait_for(lambda: (kube.get("Pod", pod["metadata"]["name"]) or {}).get("status", {})
                  .get("phase") == "Running", 20)  # fmt: skip


def test_active_deadline_fails_the_job_and_kills_the_pod(kube: FakeKube) -> None:
    batch(kube).create_namespaced_job(
        NS, worker_job("ts-deadline", sleeper(), activeDeadlineSeconds=1)
    )
    failed = kube.wait_for(lambda: condition(kube.get("Job", "ts-deadline"), "Failed"), 20)
    assert failed["reason"] == "DeadlineExceeded"
    kube.wait_for(lambda: all(p["status"]["phase"] == "Failed"
                              for p in kube.pods(f"{JOB_NAME_LABEL}=ts-deadline")), 10)  # fmt: skip


def test_kubeconfig_and_tls_for_clients_that_need_them(tmp_path: Path) -> None:
    with FakeKube(tls=True, role=CONTROLLER_ROLE) as kube:
        assert kube.url.startswith("https://")
        api = config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        assert client.BatchV1Api(api).list_namespaced_job(NS).items == []
        assert kube.requests[-1].token == "controller" and kube.requests[-1].allowed


def test_helm_lookup_discovers_and_reads_through_the_fake(tmp_path: Path) -> None:
    import helm_python as helm  # a dev dependency: `make test` installs it

    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        '{{- $s := lookup "v1" "Secret" .Release.Namespace "creds" }}\n'
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        '  token: {{ if $s }}{{ index $s.data "token" | b64dec | quote }}'
        '{{ else }}"none"{{ end }}\n'
        '  jobs: {{ (lookup "batch/v1" "Job" .Release.Namespace "").items | len | quote }}\n'
    )
    # Over plain HTTP client-go sends no token (anonymous); over TLS it sends "admin".
    for tls in (False, True):
        with FakeKube(tls=tls) as kube:
            kube.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                         "stringData": {"token": "s3cret"}}])  # fmt: skip
            ca = {"kube_ca_file": str(kube.ca_file)} if kube.ca_file else {}
            with helm.Config(
                kube_apiserver=kube.url, kube_token="admin", namespace=NS, **ca
            ) as cfg:
                rendered = cfg.render(helm.Chart.load(chart), name="probe", namespace=NS)
            assert 'token: "s3cret"' in rendered["probe/templates/cm.yaml"]
            assert 'jobs: "0"' in rendered["probe/templates/cm.yaml"]
            assert {r.path for r in kube.requests if not r.resource} >= {
                "/api/v1",
                "/apis/batch/v1",
            }
            assert {r.token for r in kube.requests} == {"admin" if tls else ""}


def test_stop_leaves_no_process_behind() -> None:
    ignore_sigterm = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn = [sys.executable, "-c", f"import signal, time; {ignore_sigterm}; time.sleep(60)"]
    with FakeKube(kubelet=Kubelet(grace_cap_s=0.5)) as kube:
        kube.apply([deployment("stubborn", 2, stubborn)])
        batch(kube).create_namespaced_job(NS, worker_job("ts-stop", sleeper()))
        kube.wait_for(lambda: len(kube.pids()) == 3, 20)
        pids = kube.pids()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_init_and_sidecar_containers_and_restarts(kube: FakeKube) -> None:
    crashing = deployment("crashy", 1, [sys.executable, "-c", "print('main'); raise SystemExit(1)"])
    pod_spec = crashing["spec"]["template"]["spec"]
    pod_spec["containers"][0].pop("readinessProbe")
    pod_spec["initContainers"] = [
        {"name": "setup", "image": "tuneship:test", "command": [sys.executable, "-c", "pass"]},
        {"name": "proxy", "image": "tuneship:test", "restartPolicy": "Always",
         "command": sleeper()},
    ]  # fmt: skip
    kube.apply([crashing])

    def restarted() -> dict[str, Any] | None:
        pod = one_pod(kube, "app.kubernetes.io/component=crashy")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return pod if statuses[0].get("restartCount", 0) >= 2 else None

    pod = kube.wait_for(restarted, 20, "the main container to be restarted twice")
    status = pod["status"]
    assert status["phase"] == "Running"
    last = status["containerStatuses"][0]["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (1, "Error")
    setup, proxy = status["initContainerStatuses"]
    assert setup["state"]["terminated"]["reason"] == "Completed"
    assert "running" in proxy["state"]
    assert condition(pod, "Initialized")
    assert "main\nmain\n" in kube.pod_log(pod["metadata"]["name"])
