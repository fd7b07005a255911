"""The objects of a training on more than one node: a JobSet or a Kubeflow TrainJob.

Both are built from the chart's Job template of the stage (docs/kubernetes.md, "More
than one node"), so the pods run the same image, environment, volumes, resources,
security context, labels and annotations as a one-node Job pod. tuneship writes no
rendezvous code: every pod gets torchrun's own variables (``PET_NNODES``,
``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, the
names Kubeflow Trainer's torch runtime sets), from the TrainJob's runtime or, for a
JobSet, set here the way that runtime sets them: one replicated Job ``node`` of
``nodes`` Indexed pods, the node rank from the completion index, the master the
node-rank-0 pod's stable DNS name ``<name>-node-0-0.<name>`` (JobSet's
``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``, the subdomain being
the JobSet's own headless Service).

The pod of node rank 0 serves the stage over gRPC as a one-node Job pod does; the
others need the job itself, which reaches them in ``TUNESHIP_STAGE_JOB``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from tuneship.common.codec import job_to_text
from tuneship.common.jobs import StageJob
from tuneship.controller.providers.kube import (
    KUEUE_QUEUE_LABEL,
    TASK_LABEL,
    MultiNodeSettings,
    job_manifest,
    worker_container,
)


@dataclass(frozen=True)
class Training:
    """The custom resource that runs a training on more than one node."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @staticmethod
    def of(kind: str) -> Training:
        """``jobset`` or ``trainjob`` (``TUNESHIP_MULTINODE_KIND``)."""
        return TRAINJOB if kind == "trainjob" else JOBSET


JOBSET = Training("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet")
TRAINJOB = Training("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
MULTI_NODE_KINDS = ("jobset", "trainjob")
REPLICATED_JOB = "node"
"""The replicated Job of the nodes (the name Kubeflow Trainer's runtimes use)."""
TRAINJOB_CONTAINER = "node"
"""The trainer container of Kubeflow Trainer's torch runtimes."""
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
NODE_RANK_FIELD = f"metadata.annotations['{COMPLETION_INDEX}']"
STAGE_JOB_ENV = "TUNESHIP_STAGE_JOB"
PATCH_MANAGER = "tuneship.dev/controller"
KUEUE_LABELS = (KUEUE_QUEUE_LABEL, "kueue.x-k8s.io/priority-class")
RUNTIME_SET = ("PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR",
               "PET_MASTER_PORT")  # fmt: skip


@dataclass(frozen=True)
class Topology:
    """What a training asks for: nodes and processes per node."""

    nodes: int
    devices: int | str


def topology(job: StageJob) -> Topology:
    """``train.nodes`` and ``train.devices`` of the job's spec (1 and ``auto`` when the
    spec does not say; the stage validates the spec itself)."""
    try:
        train = json.loads(job.spec_json).get("train") or {}
    except (ValueError, AttributeError):
        return Topology(1, "auto")
    nodes = train.get("nodes", 1)
    devices = train.get("devices", "auto")
    return Topology(nodes if isinstance(nodes, int) and nodes > 0 else 1,
                    devices if isinstance(devices, int) else "auto")  # fmt: skip


def procs_per_node(template: dict[str, Any], devices: int | str) -> int:
    """torchrun's processes on each node: ``train.devices`` when it is a number, else the
    GPUs the template gives a pod (the chart's ``trainer.gpu.count``), else 1."""
    if isinstance(devices, int):
        return devices
    limits = (worker_container(template).get("resources") or {}).get("limits") or {}
    gpus = [int(str(v)) for k, v in limits.items() if "gpu" in k.lower() and str(v).isdigit()]
    return max(gpus, default=0) or 1


def master_address(name: str) -> str:
    """The DNS name of node rank 0's pod (JobSet's hostname + subdomain)."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}"


def jobset_manifest(
    template: dict[str, Any], stage: str, job: StageJob, namespace: str,
    nodes: int, settings: MultiNodeSettings, procs: int,
) -> dict[str, Any]:  # fmt: skip
    """The JobSet of one attempt: the stage's Job (as ``job_manifest`` names and labels
    it) as its one replicated Job, Indexed with a pod per node, plus the rendezvous
    environment. Kueue's labels move to the JobSet, which is created suspended."""
    one = job_manifest(template, stage, job.task_id, namespace)
    meta, spec = one["metadata"], one["spec"]
    queued = KUEUE_QUEUE_LABEL in meta["labels"]
    name = meta["name"]
    for key in ("suspend", "ttlSecondsAfterFinished"):
        spec.pop(key, None)
    spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    container = worker_container(one)
    env = [e for e in container["env"] if e["name"] not in (*RUNTIME_SET, STAGE_JOB_ENV)]
    port = settings.rendezvous_port
    container["env"] = [
        *env,
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": NODE_RANK_FIELD}}},
        {"name": "PET_MASTER_ADDR", "value": master_address(name)},
        {"name": "PET_MASTER_PORT", "value": str(port)},
        {"name": STAGE_JOB_ENV, "value": job_to_text(job)},
    ]
    ports = [p for p in container.get("ports") or [] if p.get("name") != "rendezvous"]
    container["ports"] = [*ports, {"name": "rendezvous", "containerPort": port, "protocol": "TCP"}]
    job_labels = {k: v for k, v in meta["labels"].items() if k not in KUEUE_LABELS}
    jobset_spec: dict[str, Any] = {
        # tuneship owns retries: a failed node fails the JobSet, and the attempt.
        "failurePolicy": {"maxRestarts": 0},
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "replicatedJobs": [{
            "name": REPLICATED_JOB, "replicas": 1,
            "template": {"metadata": {"labels": job_labels,
                                      "annotations": dict(meta.get("annotations") or {})},
                         "spec": spec},
        }],
    }  # fmt: skip
    ttl = template["spec"].get("ttlSecondsAfterFinished")
    if ttl is not None:
        jobset_spec["ttlSecondsAfterFinished"] = ttl
    if queued:
        jobset_spec["suspend"] = True  # Kueue un-suspends it when it admits the workload
    return {
        "apiVersion": JOBSET.api_version, "kind": JOBSET.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(meta["labels"]),
                     "annotations": dict(meta.get("annotations") or {})},
        "spec": jobset_spec,
    }  # fmt: skip


def trainjob_manifest(
    template: dict[str, Any], stage: str, job: StageJob, namespace: str,
    nodes: int, settings: MultiNodeSettings, procs: int,
) -> dict[str, Any]:  # fmt: skip
    """The TrainJob of one attempt: the runtime ``settings.trainjob_runtime`` runs it
    (and sets the ``PET_*`` variables); the Job template's container becomes
    ``spec.trainer`` and the rest of its pod a ``runtimePatches`` entry."""
    one = job_manifest(template, stage, job.task_id, namespace)
    meta, pod = one["metadata"], one["spec"]["template"]
    container = worker_container(one)
    env = [e for e in container.get("env", []) if e["name"] not in (*RUNTIME_SET, STAGE_JOB_ENV)]
    trainer: dict[str, Any] = {
        "image": container["image"],
        # The runtime's container has its own command: run the image's entrypoint.
        "command": list(container.get("command") or ["tuneship"]),
        "args": [str(a) for a in container.get("args") or []],
        "env": [*env, {"name": STAGE_JOB_ENV, "value": job_to_text(job)}],
        "numNodes": nodes,
        "numProcPerNode": procs,
    }
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    pod_spec = pod["spec"]
    patch_spec: dict[str, Any] = {
        key: copy.deepcopy(pod_spec[key])
        for key in ("affinity", "imagePullSecrets", "nodeSelector", "securityContext",
                    "serviceAccountName", "terminationGracePeriodSeconds", "tolerations",
                    "volumes")
        if pod_spec.get(key) not in (None, {}, [])
    }  # fmt: skip
    patch_spec["containers"] = [{
        "name": TRAINJOB_CONTAINER,
        **{k: container[k] for k in ("securityContext", "volumeMounts") if container.get(k)},
    }]  # fmt: skip
    pod_meta = {k: v for k, v in (pod.get("metadata") or {}).items()
                if k in ("labels", "annotations")}  # fmt: skip
    job_labels = {k: v for k, v in meta["labels"].items() if k not in KUEUE_LABELS}
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINJOB.group, "kind": "ClusterTrainingRuntime",
                       "name": settings.trainjob_runtime},
        "trainer": trainer,
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {
            "spec": {"replicatedJobs": [{"name": REPLICATED_JOB, "template": {
                "metadata": {"labels": job_labels},
                "spec": {"template": {"metadata": pod_meta, "spec": patch_spec}},
            }}]},
        }}}],
    }  # fmt: skip
    deadline = one["spec"].get("activeDeadlineSeconds")
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    if KUEUE_QUEUE_LABEL in meta["labels"]:
        spec["suspend"] = True
    return {
        "apiVersion": TRAINJOB.api_version, "kind": TRAINJOB.kind,
        "metadata": {"name": meta["name"], "namespace": namespace,
                     "labels": dict(meta["labels"]),
                     "annotations": dict(meta.get("annotations") or {})},
        "spec": spec,
    }  # fmt: skip


def network_policy(
    template: dict[str, Any], owner: dict[str, Any], task_digest: str
) -> dict[str, Any]:
    """The chart's NetworkPolicy for one training's pods, selecting exactly them (the
    ``tuneship.dev/task`` label only they carry) and owned by the JobSet/TrainJob, so
    the garbage collector deletes it with them."""
    policy = copy.deepcopy(template)
    meta = owner["metadata"]
    selector = {"matchLabels": {TASK_LABEL: task_digest}}
    policy["metadata"] = {
        **(policy.get("metadata") or {}),
        "name": meta["name"], "namespace": meta["namespace"],
        "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                             "name": meta["name"], "uid": meta["uid"]}],
    }  # fmt: skip
    spec = policy.setdefault("spec", {})
    spec["podSelector"] = selector
    for rule in spec.get("ingress") or []:
        rule["from"] = [{"podSelector": selector}]
    for rule in spec.get("egress") or []:
        rule["to"] = [{"podSelector": selector}]
    return policy
