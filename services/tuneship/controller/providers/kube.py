"""What the Kubernetes providers share: settings, names and labels, the Job manifest.

docs/kubernetes.md is the contract with the chart: the chart renders one Job manifest
per ``k8s-job`` stage; the controller only names it after the attempt and adds the
attempt's labels, annotation and ``TUNESHIP_TASK_ID``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneship.common.errors import InvalidInput

STAGE_LABEL = "tuneship.dev/stage"
TASK_LABEL = "tuneship.dev/task"
"""A hash of the task id (label values are limited to 63 characters)."""
TASK_ANNOTATION = "tuneship.dev/task-id"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
"""The Helm release: two releases in one namespace never see each other's Jobs."""
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
WORKER_CONTAINER = "worker"
GRPC_PORT_NAME = "grpc"
PROVIDER_KINDS = ("static", "k8s-job", "k8s-pool")


@dataclass(frozen=True)
class MultiNodeSettings:
    """How a training with ``train.nodes`` > 1 runs (``TUNESHIP_MULTINODE_*``)."""

    kind: str = "jobset"
    """``jobset`` (JobSet ``jobset.x-k8s.io/v1alpha2``) or ``trainjob`` (Kubeflow
    Trainer ``trainer.kubeflow.org/v1alpha1``)."""
    trainjob_runtime: str = "torch-distributed"
    """The ClusterTrainingRuntime a TrainJob references."""
    rendezvous_port: int = 29400
    """``PET_MASTER_PORT`` of a JobSet's pods (a TrainJob's runtime sets its own)."""
    max_nodes: int = 8
    """The most nodes one training may ask for."""
    network_policy: dict[str, Any] | None = None
    """The chart's NetworkPolicy for the pods of one training (None: none is created)."""


@dataclass(frozen=True)
class KubeSettings:
    """How the controller uses the Kubernetes API (built by the entry point)."""

    namespace: str
    """Where Jobs are created and EndpointSlices watched (``TUNESHIP_K8S_NAMESPACE``)."""
    api: Any
    """A ``kubernetes.client.Configuration`` (in-cluster service account or kubeconfig)."""
    job_templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stage -> its Job manifest (``TUNESHIP_JOB_TEMPLATES/<stage>.yaml``)."""
    pools: dict[str, str] = field(default_factory=dict)
    """Stage -> the headless Service of its pool (``TUNESHIP_POOLS``)."""
    pool_capacity: dict[str, int] = field(default_factory=dict)
    """Stage -> tasks one pool pod runs at once (``TUNESHIP_POOL_CAPACITY``; default 1)."""
    unschedulable_timeout_s: float = 900.0
    """A Job pod that no node can take for this long fails the attempt (UNAVAILABLE)."""
    start_timeout_s: float = 1800.0
    """A scheduled Job pod not Ready after this long fails the attempt (UNAVAILABLE)."""
    multinode: MultiNodeSettings = field(default_factory=MultiNodeSettings)
    """Trainings on more than one node (a JobSet or TrainJob instead of a Job)."""


def job_name(stage: str, task_id: str) -> str:
    """The Job of an attempt: the same task id always gives the same name."""
    return f"ts-{stage}-{task_digest(task_id)}"


def task_digest(task_id: str) -> str:
    return hashlib.sha256(task_id.encode()).hexdigest()[:16]


def load_job_template(path: Path) -> dict[str, Any]:
    """Read and check one Job manifest of the chart's jobs ConfigMap."""
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read the Job template: {exc}", where=str(path)) from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != "Job":
        raise InvalidInput("not a batch/v1 Job manifest", where=str(path),
                           hint="the chart renders it into the jobs ConfigMap")  # fmt: skip
    try:
        worker_container(manifest)
        grpc_port(manifest)
    except (KeyError, TypeError, StopIteration) as exc:
        raise InvalidInput(
            f"the Job template needs a container {WORKER_CONTAINER!r} with a port named "
            f"{GRPC_PORT_NAME!r}", where=f"{path}: spec.template.spec.containers",
        ) from exc  # fmt: skip
    return manifest


def load_network_policy(path: Path) -> dict[str, Any] | None:
    """The chart's NetworkPolicy for one multi-node training's pods (``train-network.yaml``
    in the jobs ConfigMap, rendered with ``networkPolicy.enabled``); None without one."""
    if not path.is_file():
        return None
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"cannot read the NetworkPolicy template: {exc}", where=str(path)
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != "NetworkPolicy":
        raise InvalidInput("not a NetworkPolicy manifest", where=str(path),
                           hint="the chart renders it into the jobs ConfigMap")  # fmt: skip
    return manifest


def worker_container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == WORKER_CONTAINER)


def grpc_port(manifest: dict[str, Any]) -> int:
    ports = worker_container(manifest)["ports"]
    return int(next(p for p in ports if p.get("name") == GRPC_PORT_NAME)["containerPort"])


def attempt_selector(templates: Iterable[dict[str, Any]]) -> str:
    """The label selector of this controller's Jobs and their pods: attempts of its own
    release (the templates' ``app.kubernetes.io/instance``), any release without one."""
    releases = {(t.get("metadata") or {}).get("labels", {}).get(INSTANCE_LABEL) for t in templates}
    releases.discard(None)
    if len(releases) == 1:
        return f"{TASK_LABEL},{INSTANCE_LABEL}={releases.pop()}"
    return TASK_LABEL


def job_manifest(template: dict[str, Any], stage: str, task_id: str, namespace: str) -> dict:
    """The Job for one attempt of ``stage``: the chart's template, named and labelled."""
    job = copy.deepcopy(template)
    labels = {STAGE_LABEL: stage, TASK_LABEL: task_digest(task_id)}
    meta = job.setdefault("metadata", {})
    meta.update(name=job_name(stage, task_id), namespace=namespace)
    meta.setdefault("labels", {}).update(labels)
    meta.setdefault("annotations", {})[TASK_ANNOTATION] = task_id
    if INSTANCE_LABEL in meta["labels"]:
        labels[INSTANCE_LABEL] = meta["labels"][INSTANCE_LABEL]
    pod_meta = job["spec"]["template"].setdefault("metadata", {})
    pod_meta.setdefault("labels", {}).update(labels)
    for spec in job["spec"]["template"]["spec"].get("containers", []):
        _quantities_as_strings(spec.get("resources") or {})
    container = worker_container(job)
    env = [e for e in container.get("env", []) if e.get("name") != "TUNESHIP_TASK_ID"]
    container["env"] = [*env, {"name": "TUNESHIP_TASK_ID", "value": task_id}]
    if KUEUE_QUEUE_LABEL in meta["labels"]:
        # Created suspended: Kueue un-suspends it when the workload is admitted.
        job["spec"]["suspend"] = True
    return job


def _quantities_as_strings(resources: dict[str, Any]) -> None:
    # YAML lets `nvidia.com/gpu: 1` be a number; the API client's models want strings.
    for part in ("requests", "limits"):
        for name, value in (resources.get(part) or {}).items():
            resources[part][name] = str(value)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type ``kind`` (Job or Pod), if any."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_true(obj: dict[str, Any], kind: str) -> bool:
    found = condition(obj, kind)
    return found is not None and found.get("status") == "True"
