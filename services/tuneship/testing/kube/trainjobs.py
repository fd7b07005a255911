"""The Kubeflow Trainer controller (``trainer.kubeflow.org/v1alpha1``), reduced to the
torch runtime: a TrainJob becomes a JobSet, as the Trainer's docs and its torch plugin
describe it.

Per TrainJob: the ClusterTrainingRuntime named by ``spec.runtimeRef`` (missing: a
``Warning`` Event and nothing else) gives the JobSet template; the replicated Job whose
template carries ``trainer.kubeflow.org/trainjob-ancestor-step: trainer`` runs the
trainer: its Job gets ``parallelism`` = ``completions`` = ``spec.trainer.numNodes``
(default the runtime's ``mlPolicy.numNodes``), and its container ``node`` the trainer's
``image``, ``command``, ``args``, ``env`` (merged by name) and ``resourcesPerNode``, plus
the torch plugin's variables: ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``
(the completion index), ``PET_MASTER_ADDR`` (``<trainjob>-node-0-0.<trainjob>``) and
``PET_MASTER_PORT`` (29400, also a container port). ``spec.runtimePatches`` are applied
(labels and annotations; the Pod spec fields a ``PodSpecPatch`` has, lists appended,
containers patched by name). The JobSet is named after the TrainJob, owned by it, and
suspended while the TrainJob is. Status: ``Suspended``, then ``Complete`` or ``Failed``
as the JobSet ends. Initializers, other ML policies and pod-group policies are not
modelled.
"""

from __future__ import annotations

import copy
from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.jobsets import owner_reference, set_condition
from tuneship.testing.kube.recorder import record_event
from tuneship.testing.kube.store import ObjectStore

ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINER_CONTAINER = "node"
TRAINER_PORT = 29400
NODE_RANK_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
_COMPONENT = "trainjob-controller"
_POD_PATCH_FIELDS = ("affinity", "nodeSelector", "securityContext", "serviceAccountName",
                     "terminationGracePeriodSeconds")  # fmt: skip
_POD_PATCH_LISTS = ("imagePullSecrets", "schedulingGates", "tolerations", "volumes")


def torch_distributed_runtime() -> dict[str, Any]:
    """The shape of Kubeflow Trainer's ``torch-distributed`` ClusterTrainingRuntime (its
    manifests: one replicated Job ``node`` of the trainer, container ``node``), for tests
    to install."""
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
        "metadata": {"name": "torch-distributed"},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [{"name": "node", "template": {
                "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                "spec": {"template": {"spec": {"containers": [{
                    "name": TRAINER_CONTAINER,
                    "image": "pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime",
                    "command": ["/bin/bash", "-c", "env | grep PET_"],
                }]}}},
            }}]}},
        },
    }  # fmt: skip


class TrainJobController:
    """Reconciles every TrainJob (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._warned: set[str] = set()

    def reconcile(self) -> None:
        trainjobs, _ = self._store.select(r.TRAINJOB)
        for trainjob in trainjobs:
            meta = trainjob["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            jobset = self._store.find(r.JOBSET, meta["namespace"], meta["name"])
            if jobset is None:
                jobset = self._create_jobset(trainjob)
            if jobset is None:
                continue
            suspend = bool(trainjob["spec"].get("suspend"))
            if bool(jobset["spec"].get("suspend")) != suspend:
                self._suspend(jobset, suspend)
            self._write_status(trainjob, jobset, suspend)

    def _create_jobset(self, trainjob: dict[str, Any]) -> dict[str, Any] | None:
        meta, spec = trainjob["metadata"], trainjob["spec"]
        ref = spec["runtimeRef"]
        runtime = self._store.find(r.TRAINING_RUNTIME, "", ref["name"])
        if runtime is None:
            if meta["uid"] not in self._warned:
                self._warned.add(meta["uid"])
                why = f'ClusterTrainingRuntime "{ref["name"]}" not found'
                record_event(self._store, trainjob, "Warning", "TrainJobResourcesCreationFailed",
                             why, _COMPONENT)  # fmt: skip
            return None
        template = copy.deepcopy(runtime["spec"]["template"])
        jobset_spec = template.get("spec") or {}
        policy = runtime["spec"].get("mlPolicy") or {}
        trainer = spec.get("trainer") or {}
        nodes = int(trainer.get("numNodes") or policy.get("numNodes") or 1)
        procs = trainer.get("numProcPerNode") or (policy.get("torch") or {}).get("numProcPerNode")
        for rj in jobset_spec.get("replicatedJobs") or []:
            job = rj["template"]
            if (job.get("metadata") or {}).get("labels", {}).get(ANCESTOR_LABEL) == "trainer":
                job["spec"].update(parallelism=nodes, completions=nodes)
                _apply_trainer(job["spec"]["template"], trainer, meta["name"], nodes, procs)
        # The JobSet's own labels come from the runtime and the patches, not from the
        # TrainJob (whose Kueue queue label would make Kueue queue the JobSet again).
        template_meta = template.get("metadata") or {}
        labels = dict(template_meta.get("labels") or {})
        annotations = dict(template_meta.get("annotations") or {})
        for patch in spec.get("runtimePatches") or []:
            patched = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
            labels.update((patched.get("metadata") or {}).get("labels") or {})
            annotations.update((patched.get("metadata") or {}).get("annotations") or {})
            _apply_patch(jobset_spec, patched.get("spec") or {})
        jobset_spec["suspend"] = bool(spec.get("suspend"))
        jobset = {
            "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "labels": labels, "annotations": annotations,
                         "ownerReferences": [owner_reference(trainjob)]},
            "spec": jobset_spec,
        }  # fmt: skip
        try:
            created = self._store.create(r.JOBSET, meta["namespace"], jobset)
        except ApiError as error:
            if meta["uid"] not in self._warned:
                self._warned.add(meta["uid"])
                record_event(self._store, trainjob, "Warning", "TrainJobResourcesCreationFailed",
                             error.message, _COMPONENT)  # fmt: skip
            return None
        record_event(self._store, trainjob, "Normal", "Created",
                     f"Created JobSet: {meta['name']}", _COMPONENT)  # fmt: skip
        return created

    def _suspend(self, jobset: dict[str, Any], suspend: bool) -> None:
        def change(obj: dict[str, Any]) -> None:
            obj["spec"]["suspend"] = suspend

        meta = jobset["metadata"]
        self._store.mutate(r.JOBSET, meta["namespace"], meta["name"], change)

    def _write_status(
        self, trainjob: dict[str, Any], jobset: dict[str, Any], suspend: bool
    ) -> None:
        status = copy.deepcopy(trainjob.get("status") or {})
        set_condition(status, "Suspended", suspend, "Suspended" if suspend else "Resumed",
                      "TrainJob is suspended" if suspend else "TrainJob is resumed")  # fmt: skip
        terminal = (jobset.get("status") or {}).get("terminalState")
        if terminal == "Completed":
            set_condition(status, "Complete", True, "JobsCompleted", "TrainJob is completed")
        elif terminal == "Failed":
            failed = [c for c in jobset["status"].get("conditions") or [] if c["type"] == "Failed"]
            message = failed[0].get("message", "") if failed else ""
            set_condition(status, "Failed", True, "JobsFailed", message)
        if status == trainjob.get("status"):
            return
        uid = trainjob["metadata"]["uid"]

        def write(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == uid:
                obj["status"] = status

        meta = trainjob["metadata"]
        self._store.mutate(r.TRAINJOB, meta["namespace"], meta["name"], write)


def _apply_trainer(
    pod: dict[str, Any], trainer: dict[str, Any], name: str, nodes: int, procs: Any
) -> None:
    for container in pod["spec"]["containers"]:
        if container["name"] != TRAINER_CONTAINER:
            continue
        for key in ("image", "command", "args"):
            if trainer.get(key) is not None:
                container[key] = copy.deepcopy(trainer[key])
        if trainer.get("resourcesPerNode"):
            container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
        torch: list[dict[str, Any]] = [
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(procs or "auto")},
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": NODE_RANK_FIELD}}},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)},
        ]
        container["env"] = _merge_env(container.get("env"), [*(trainer.get("env") or []), *torch])
        ports = [p for p in container.get("ports") or [] if p["containerPort"] != TRAINER_PORT]
        container["ports"] = [*ports, {"containerPort": TRAINER_PORT, "protocol": "TCP"}]


def _apply_patch(jobset_spec: dict[str, Any], patch: dict[str, Any]) -> None:
    by_name = {rj["name"]: rj for rj in jobset_spec.get("replicatedJobs") or []}
    for rj_patch in patch.get("replicatedJobs") or []:
        rj = by_name.get(rj_patch["name"])
        if rj is None:
            continue
        job_patch = rj_patch.get("template") or {}
        job = rj["template"]
        _merge_meta(job.setdefault("metadata", {}), job_patch.get("metadata") or {})
        pod_patch = ((job_patch.get("spec") or {}).get("template")) or {}
        pod = job["spec"]["template"]
        _merge_meta(pod.setdefault("metadata", {}), pod_patch.get("metadata") or {})
        _patch_pod_spec(pod["spec"], pod_patch.get("spec") or {})


def _patch_pod_spec(spec: dict[str, Any], patch: dict[str, Any]) -> None:
    for key in _POD_PATCH_FIELDS:
        if key in patch:
            spec[key] = copy.deepcopy(patch[key])
    for key in _POD_PATCH_LISTS:
        if key in patch:
            spec[key] = [*(spec.get(key) or []), *copy.deepcopy(patch[key])]
    for field in ("containers", "initContainers"):
        by_name = {c["name"]: c for c in spec.get(field) or []}
        for container_patch in patch.get(field) or []:
            container = by_name.get(container_patch["name"])
            if container is None:
                continue
            if "env" in container_patch:
                container["env"] = _merge_env(container.get("env"), container_patch["env"])
            if "securityContext" in container_patch:
                container["securityContext"] = copy.deepcopy(container_patch["securityContext"])
            if "volumeMounts" in container_patch:
                mounts = container.get("volumeMounts") or []
                container["volumeMounts"] = [
                    *mounts,
                    *copy.deepcopy(container_patch["volumeMounts"]),
                ]


def _merge_meta(meta: dict[str, Any], patch: dict[str, Any]) -> None:
    for key in ("labels", "annotations"):
        if patch.get(key):
            meta[key] = {**(meta.get(key) or {}), **patch[key]}


def _merge_env(
    env: list[dict[str, Any]] | None, extra: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    merged = {e["name"]: e for e in env or []}
    for var in extra:
        merged[var["name"]] = copy.deepcopy(var)
    return list(merged.values())
