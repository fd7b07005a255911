"""The fake Kubernetes API's multi-node pieces: JobSet and TrainJob objects checked
against their published schemas, the fake JobSet and Trainer controllers turning them
into Indexed Jobs whose pods are real processes, and the fake DNS that lets node 1
reach node 0 by its JobSet hostname."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tuneship.testing.kube import FakeKube, Kubelet
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.trainjobs import torch_distributed_runtime

pytestmark = pytest.mark.integration

NS = "tuneship"
JOBSET = ("jobset.x-k8s.io", "v1alpha2", NS, "jobsets")
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", NS, "trainjobs")

# Prints its rendezvous environment as JSON, then serves TCP on its own address until
# node 1 has connected to node 0 by the master address (a rendezvous in miniature).
NODE = """
import json, os, socket, sys, time
env = {k: v for k, v in os.environ.items() if k.startswith(("PET_", "JOB_COMPLETION"))}
print(json.dumps(env), flush=True)
port = int(os.environ["PET_MASTER_PORT"])
if os.environ["PET_NODE_RANK"] == "0":
    server = socket.create_server((os.environ["POD_IP"], port))
    server.settimeout(60)
    conn, _ = server.accept()
    print("node 1 connected", flush=True)
else:
    for _ in range(200):
        try:
            socket.create_connection((os.environ["PET_MASTER_ADDR"], port), 1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(1)
time.sleep(float(os.environ.get("HOLD_S", "0")))  # a node to kill stays up until it is
"""


def node_container(name: str) -> dict[str, Any]:
    return {
        "name": name, "image": "python", "command": [sys.executable, "-c", NODE],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    }  # fmt: skip


def jobset(name: str, nodes: int, port: int) -> dict[str, Any]:
    container = node_container("worker")
    container["env"] += [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath":
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
        {"name": "PET_MASTER_PORT", "value": str(port)},
    ]  # fmt: skip
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": name, "labels": {"app": "multi"}},
        "spec": {
            "failurePolicy": {"maxRestarts": 0},
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": {
                "completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
                "backoffLimit": 0,
                "template": {"metadata": {"labels": {"app": "multi"}},
                             "spec": {"restartPolicy": "Never", "containers": [container]}},
            }}}],
        },
    }  # fmt: skip


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(NS, kubelet=Kubelet(grace_cap_s=2.0)) as running:
        yield running


def custom(kube: FakeKube) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def running(kube: FakeKube, name: str) -> bool:
    """Whether the pod's (only) container has started and not stopped."""
    statuses = (kube.get("Pod", name) or {}).get("status", {}).get("containerStatuses") or []
    return bool(statuses) and "running" in statuses[0].get("state", {})


def printed_env(kube: FakeKube, pod: dict[str, Any]) -> dict[str, str]:
    name = pod["metadata"]["name"]

    def printed() -> str:
        try:
            return kube.pod_log(name).strip()
        except ApiError:  # not started yet
            return ""

    log = kube.wait_for(printed, 30, f"{name} printing")
    return json.loads(log.splitlines()[0])


def test_a_jobset_runs_indexed_pods_that_reach_node_0_by_its_hostname(kube: FakeKube) -> None:
    port = 29400
    custom(kube).create_namespaced_custom_object(*JOBSET, jobset("train", 2, port))
    [job] = kube.wait_for(lambda: kube.jobs(), 10, "the JobSet's Job")
    assert job["metadata"]["name"] == "train-node-0"
    assert job["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == "train"
    assert job["spec"]["completionMode"] == "Indexed"
    assert kube.get("Service", "train")["spec"]["clusterIP"] == "None"
    pods = kube.wait_for(lambda: len(kube.pods("app=multi")) == 2 and kube.pods("app=multi"))
    by_rank = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods
    }
    assert by_rank["0"]["spec"]["hostname"] == "train-node-0-0"
    assert by_rank["1"]["spec"]["subdomain"] == "train"
    node0 = kube.wait_for(lambda: kube.get("Pod", by_rank["0"]["metadata"]["name"])["status"]
                          .get("podIP"))  # fmt: skip
    seen = printed_env(kube, by_rank["1"])
    # The master's DNS name reached the process as node 0's own loopback address.
    assert seen["PET_MASTER_ADDR"] == node0
    assert (seen["PET_NODE_RANK"], seen["JOB_COMPLETION_INDEX"]) == ("1", "1")
    done = kube.wait_for(
        lambda: (kube.get("JobSet", "train").get("status") or {}).get("terminalState"), 60
    )
    assert done == "Completed", kube.describe()
    assert "node 1 connected" in kube.pod_log(by_rank["0"]["metadata"]["name"])


def test_a_failed_node_fails_the_jobset_and_deleting_it_removes_everything(
    kube: FakeKube,
) -> None:
    lost = jobset("lost", 2, 29401)
    # The nodes stay up after they met: on a loaded machine node 1 could otherwise
    # finish between the check that it runs and the kill (seen: Completed, not Failed).
    pod = lost["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"].append({"name": "HOLD_S", "value": "60"})
    custom(kube).create_namespaced_custom_object(*JOBSET, lost)
    pods = kube.wait_for(lambda: len(kube.pods("app=multi")) == 2 and kube.pods("app=multi"))
    rank1 = next(p for p in pods if p["metadata"]["annotations"][
        "batch.kubernetes.io/job-completion-index"] == "1")  # fmt: skip
    # Wait for the container itself, not the pod's IP: node 1 has its IP while it waits in
    # ContainerCreating for node 0's name to resolve, which it does only once the kubelet
    # has started node 0 (seen on a loaded machine: no running container to kill).
    kube.wait_for(lambda: running(kube, rank1["metadata"]["name"]), 30, "node 1 running")
    kube.oom_kill(rank1["metadata"]["name"])
    state = kube.wait_for(
        lambda: (kube.get("JobSet", "lost").get("status") or {}).get("terminalState"), 30
    )
    assert state == "Failed"
    custom(kube).delete_namespaced_custom_object(
        *JOBSET, "lost", body=client.V1DeleteOptions(propagation_policy="Background")
    )
    kube.wait_for(lambda: not kube.pods("app=multi") and not kube.jobs(), 30, "all gone")
    assert kube.get("Service", "lost") is None


def test_objects_that_do_not_match_the_published_schemas_are_refused(kube: FakeKube) -> None:
    api = custom(kube)
    misspelt = jobset("bad", 2, 29400)
    misspelt["spec"]["replicatedJobs"][0]["replica"] = 1
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(*JOBSET, misspelt)
    assert refused.value.status == 422
    assert "replicatedJobs[0].replica: field not declared in schema" in refused.value.body
    wrong_type = jobset("bad", 2, 29400)
    wrong_type["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"][0]["ports"] = [{"containerPort": "29400"}]  # fmt: skip
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(*JOBSET, wrong_type)
    assert refused.value.status == 422 and "containerPort" in refused.value.body
    no_runtime = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                  "metadata": {"name": "bad"}, "spec": {"trainer": {"numNodes": 2}}}  # fmt: skip
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(*TRAINJOB, no_runtime)
    assert refused.value.status == 422 and "runtimeRef" in refused.value.body


def test_a_trainjob_becomes_a_jobset_with_the_torch_runtime_environment(kube: FakeKube) -> None:
    kube.apply([torch_distributed_runtime()])
    container = node_container("node")
    trainjob = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "tj"},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {"image": "python", "command": container["command"],
                        "env": container["env"], "numNodes": 2, "numProcPerNode": 1},
            "runtimePatches": [{"manager": "test", "trainingRuntimeSpec": {"template": {
                "spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {
                    "template": {"metadata": {"labels": {"app": "multi"}}}}}}]}}}}],
        },
    }  # fmt: skip
    custom(kube).create_namespaced_custom_object(*TRAINJOB, trainjob)
    made = kube.wait_for(lambda: kube.get("JobSet", "tj"), 10, "the TrainJob's JobSet")
    assert made["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    pods = kube.wait_for(lambda: len(kube.pods("app=multi")) == 2 and kube.pods("app=multi"))
    rank1 = next(p for p in pods if p["spec"]["hostname"] == "tj-node-0-1")
    seen = printed_env(kube, rank1)
    rendezvous = (seen["PET_NNODES"], seen["PET_NODE_RANK"], seen["PET_MASTER_PORT"])
    assert rendezvous == ("2", "1", "29400")
    status = kube.wait_for(
        lambda: [c["type"] for c in (kube.get("TrainJob", "tj").get("status") or {})
                 .get("conditions") or [] if c["status"] == "True"], 60)  # fmt: skip
    kube.wait_for(lambda: "Complete" in [
        c["type"] for c in kube.get("TrainJob", "tj")["status"]["conditions"]
        if c["status"] == "True"], 60, "TrainJob Complete")  # fmt: skip
    assert "Failed" not in status
