"""A training on more than one node, as the controller builds it from the chart's Job
template: the JobSet and the TrainJob conform to their published schemas, carry the
one-node Job pod's shape and torchrun's rendezvous environment, and the NetworkPolicy
of one training lets exactly its own pods reach each other."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tuneship.common.codec import job_from_text
from tuneship.common.jobs import Artifact, StageJob
from tuneship.controller.providers.kube import MultiNodeSettings, task_digest
from tuneship.controller.providers.multinode import (
    STAGE_JOB_ENV,
    jobset_manifest,
    network_policy,
    procs_per_node,
    topology,
    trainjob_manifest,
)
from tuneship.testing.helm import (
    NAMESPACE,
    NEWEST,
    OLDEST,
    Endpoint,
    Rendered,
    allowed_paths,
    pod_endpoints,
    render,
)
from tuneship.testing.kube.crds import schema_causes
from tuneship.testing.kubecluster import TEST_VALUES, merged

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

JOB = StageJob(
    "p1.train.2", "p1", json.dumps({"train": {"nodes": 3, "devices": 2}}),
    {"base": Artifact("inputs/base", "ab" * 32, 10)}, "pipelines/p1/stages/train",
)  # fmt: skip


@pytest.fixture(scope="module")
def chart() -> Rendered:
    return render(merged(TEST_VALUES, {"kueue": {"queueName": "gpu"},
                                       "trainer": {"gpu": {"count": 4}}}))  # fmt: skip


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_the_jobset_conforms_and_runs_the_job_pod_on_every_node(chart: Rendered) -> None:
    template = chart.job_templates()["train"]
    shape = topology(JOB)
    procs = procs_per_node(template, shape.devices)
    jobset = jobset_manifest(
        template, "train", JOB, NAMESPACE, shape.nodes, MultiNodeSettings(), procs
    )
    assert schema_causes(jobset) == []
    name = jobset["metadata"]["name"]
    assert name == f"ts-train-{task_digest(JOB.task_id)}"
    assert jobset["metadata"]["annotations"]["tuneship.dev/task-id"] == JOB.task_id
    # Kueue queues the JobSet, created suspended; its Jobs carry no queue of their own.
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert jobset["spec"]["suspend"] is True
    [replicated] = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 0 and "suspend" not in spec
    assert spec["podFailurePolicy"] == template["spec"]["podFailurePolicy"]
    pod = spec["template"]["spec"]
    one = template["spec"]["template"]["spec"]
    for key in ("securityContext", "serviceAccountName", "volumes", "automountServiceAccountToken"):
        assert pod[key] == one[key], key
    [worker] = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    env = env_of(worker)
    assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_NODE_RANK"] == {"fieldRef": {"fieldPath":
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}  # fmt: skip
    assert env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
    assert env["PET_MASTER_PORT"] == "29400"
    assert env["TUNESHIP_TASK_ID"] == JOB.task_id
    assert job_from_text(env[STAGE_JOB_ENV], STAGE_JOB_ENV) == JOB
    assert {"name": "rendezvous", "containerPort": 29400, "protocol": "TCP"} in worker["ports"]


def test_procs_per_node_is_the_spec_s_devices_else_the_pod_s_gpus(chart: Rendered) -> None:
    template = chart.job_templates()["train"]
    assert procs_per_node(template, 2) == 2
    assert procs_per_node(template, "auto") == 4
    cpu = render(merged(TEST_VALUES, {"trainer": {"gpu": {"count": 0}}})).job_templates()
    assert procs_per_node(cpu["train"], "auto") == 1


def test_the_trainjob_conforms_and_leaves_the_rendezvous_to_the_runtime(chart: Rendered) -> None:
    template = chart.job_templates()["train"]
    settings = MultiNodeSettings(kind="trainjob", trainjob_runtime="torch-distributed")
    trainjob = trainjob_manifest(template, "train", JOB, NAMESPACE, 3, settings, 2)
    assert schema_causes(trainjob) == []
    spec = trainjob["spec"]
    runtime = {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
               "name": "torch-distributed"}  # fmt: skip
    assert spec["runtimeRef"] == runtime
    assert spec["suspend"] is True
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    [worker] = template["spec"]["template"]["spec"]["containers"]
    assert trainer["image"] == worker["image"] and trainer["command"] == ["tuneship"]
    assert trainer["args"] == worker["args"]
    env = env_of(trainer)
    assert not [name for name in env if name.startswith("PET_")]  # reserved: the runtime's
    assert (
        job_from_text(env[STAGE_JOB_ENV], STAGE_JOB_ENV) == JOB
        and env["TUNESHIP_TASK_ID"] == JOB.task_id
    )
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    [patch] = spec["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["tuneship.dev/task"] == task_digest(JOB.task_id)
    one = template["spec"]["template"]["spec"]
    for key in (
        "securityContext",
        "serviceAccountName",
        "volumes",
        "terminationGracePeriodSeconds",
    ):
        assert pod["spec"][key] == one[key], key
    [container] = pod["spec"]["containers"]
    assert container["name"] == "node"
    assert container["volumeMounts"] == worker["volumeMounts"]


def test_a_misspelt_field_fails_the_schema_check(chart: Rendered) -> None:
    template = chart.job_templates()["train"]
    jobset = jobset_manifest(template, "train", JOB, NAMESPACE, 2, MultiNodeSettings(), 1)
    jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelisme"] = 2
    assert schema_causes(jobset) == [
        ("spec.replicatedJobs[0].template.spec.parallelisme", "field not declared in schema")
    ]


def test_the_training_network_policy_selects_only_its_own_pods(chart: Rendered) -> None:
    template = yaml.safe_load(chart.get("ConfigMap", "jobs")["data"]["train-network.yaml"])
    owner = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
             "metadata": {"name": "ts-train-x", "namespace": NAMESPACE, "uid": "u-1"}}  # fmt: skip
    policy = network_policy(template, owner, "0123456789abcdef")
    mine = {"matchLabels": {"tuneship.dev/task": "0123456789abcdef"}}
    assert policy["spec"]["podSelector"] == mine
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": mine}]}]
    assert policy["spec"]["egress"] == [{"to": [{"podSelector": mine}]}]  # every port: NCCL's
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    # The template alone selects no pod: only the controller's copy opens anything.
    assert template["spec"]["podSelector"]["matchLabels"]["tuneship.dev/task"] not in ("", None)
    without = render(merged(TEST_VALUES, {"networkPolicy": {"enabled": False}}))
    assert "train-network.yaml" not in without.get("ConfigMap", "jobs")["data"]
    rules = without.get("Role", "controller")["rules"]
    assert not [r for r in rules if "networkpolicies" in r["resources"]]


def test_the_trainjob_kind_swaps_the_role_s_rule_and_the_controller_env() -> None:
    result = render(merged(TEST_VALUES, {"trainer": {"multiNode": {
        "kind": "trainjob", "trainJobRuntime": "my-runtime", "maxNodes": 4}}}))  # fmt: skip
    rules = {(g, res): r["verbs"] for r in result.get("Role", "controller")["rules"]
             for g in r["apiGroups"] for res in r["resources"]}  # fmt: skip
    assert rules[("trainer.kubeflow.org", "trainjobs")] == ["create", "get", "list", "watch",
                                                            "delete"]  # fmt: skip
    assert ("jobset.x-k8s.io", "jobsets") not in rules
    env = result.env("Deployment", "controller", "controller")
    assert env["TUNESHIP_MULTINODE_KIND"] == "trainjob"
    assert env["TUNESHIP_TRAINJOB_RUNTIME"] == "my-runtime"
    assert env["TUNESHIP_MAX_NODES"] == "4"


def test_two_trainings_pods_reach_their_own_peers_on_any_port_and_nothing_else(
    chart: Rendered,
) -> None:
    """The rendered default-deny policies plus one controller-made policy per training,
    evaluated between two trainings' node pods, the controller and a bystander."""
    template = yaml.safe_load(chart.get("ConfigMap", "jobs")["data"]["train-network.yaml"])
    pods = {p.name: p for p in pod_endpoints(chart)}
    trainer, controller = pods["trainer"], pods["controller"]
    ns = {"kubernetes.io/metadata.name": NAMESPACE}
    nccl = frozenset({(50051, "TCP"), (29400, "TCP"), (43125, "TCP")})  # NCCL picks its own

    def node(training: str, rank: int) -> Endpoint:
        labels = {**trainer.labels, "tuneship.dev/task": training}
        return Endpoint(f"{training}-{rank}", f"10.244.9.{len(training) + rank}", nccl,
                        NAMESPACE, labels, ns)  # fmt: skip

    a, b = "a" * 16, "b" * 15
    bystander = Endpoint("bystander", "10.244.8.1", nccl, NAMESPACE, {"app": "x"}, ns)
    endpoints = [node(a, 0), node(a, 1), node(b, 0), controller, bystander]
    owners = [{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
               "metadata": {"name": f"ts-train-{t}", "namespace": NAMESPACE, "uid": t}}
              for t in (a, b)]  # fmt: skip
    policies = [
        *chart.all("NetworkPolicy"),
        *(network_policy(template, o, t) for o, t in zip(owners, (a, b), strict=True)),
    ]
    paths = {str(p) for p in allowed_paths(policies, endpoints)}
    for port in (29400, 43125, 50051):
        assert f"{a}-1 -> {a}-0:{port}/TCP" in paths
        assert f"{a}-0 -> {a}-1:{port}/TCP" in paths
        assert f"{a}-0 -> {b}-0:{port}/TCP" not in paths
        assert f"{b}-0 -> {a}-1:{port}/TCP" not in paths
        assert f"bystander -> {a}-0:{port}/TCP" not in paths
    assert f"controller -> {a}-0:50051/TCP" in paths
    assert f"controller -> {a}-0:29400/TCP" not in paths
    # Without the controller's policy, the nodes of a training could not meet at all.
    alone = {str(p) for p in allowed_paths(chart.all("NetworkPolicy"), endpoints)}
    assert f"{a}-1 -> {a}-0:29400/TCP" not in alone


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_the_embedded_job_and_the_policy_validate_strictly_against_kubernetes(
    chart: Rendered, version: str
) -> None:
    """Beside the CRD schemas: the JobSet's Job, as a batch/v1 Job, and the controller's
    NetworkPolicy against Kubernetes' own strict schemas (unknown fields refused)."""
    template = chart.job_templates()["train"]
    jobset = jobset_manifest(template, "train", JOB, NAMESPACE, 2, MultiNodeSettings(), 1)
    job = jobset["spec"]["replicatedJobs"][0]["template"]
    meta = {**job["metadata"], "name": "ts-train-x-node-0"}
    as_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job["spec"]}
    kubernetes_validate.validate(as_job, version, strict=True)
    policy_template = yaml.safe_load(chart.get("ConfigMap", "jobs")["data"]["train-network.yaml"])
    owner = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
             "metadata": {"name": "ts-train-x", "namespace": NAMESPACE, "uid": "u-1"}}  # fmt: skip
    kubernetes_validate.validate(network_policy(policy_template, owner, "0" * 16), version,
                                 strict=True)  # fmt: skip
