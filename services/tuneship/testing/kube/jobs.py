"""The Job controller (``batch/v1``), for NonIndexed Jobs.

Per pass and Job: a suspended Job has its pods deleted and ``Suspended=True``; a
running one gets pods from its template (``<job>-<5 chars>``, the Job's labels,
an ownerReference and the ``batch.kubernetes.io/job-tracking`` finalizer) up to
``parallelism``; every finished pod is counted exactly once (then its finalizer
is removed): ``Succeeded`` adds to ``succeeded``, ``Failed`` goes through the
``podFailurePolicy`` (``FailJob`` fails the Job, ``Ignore`` is not counted, so a
replacement pod follows) and otherwise adds to ``failed``. ``failed >
backoffLimit``, a ``FailJob`` rule, or ``activeDeadlineSeconds`` put the Job in
``FailureTarget`` (its pods are deleted) and then, once no pod is left running,
``Failed`` with the reason; enough successes give ``SuccessCriteriaMet`` then
``Complete``. As since Kubernetes 1.31, the terminal condition waits for the pods.
Finished Jobs are deleted after ``ttlSecondsAfterFinished``.

Indexed Jobs (``completionMode: Indexed``) get a pod per index not yet succeeded:
named ``<job>-<index>-<5 chars>``, with the ``batch.kubernetes.io/job-completion-index``
annotation and label, ``JOB_COMPLETION_INDEX`` in every container and the hostname
``<job>-<index>`` (what gives JobSet's pods their stable DNS names); the Job completes
when every index has succeeded (``completedIndexes``).

Simplified: no ``successPolicy``, no backoff delay between retries, no per-index
backoff limits, and pods the controller itself deletes (suspend, deadline, failure)
are not counted as failures.
"""

from __future__ import annotations

import copy
from typing import Any

from tuneship.testing.kube import clock
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.failurepolicy import judge
from tuneship.testing.kube.podstatus import condition
from tuneship.testing.kube.recorder import record_event
from tuneship.testing.kube.store import DeleteOptions, ObjectStore

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_COMPONENT = "job-controller"
_TERMINAL = ("Succeeded", "Failed")
_BACKGROUND = DeleteOptions(propagation="Background")


def condition_true(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The Job's condition of type ``kind`` if it is ``True``."""
    for found in job.get("status", {}).get("conditions") or []:
        if found["type"] == kind and found["status"] == "True":
            return dict(found)
    return None


def finished(job: dict[str, Any]) -> bool:
    """``Complete`` or ``Failed``."""
    return bool(condition_true(job, "Complete") or condition_true(job, "Failed"))


class JobController:
    """Reconciles every Job (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._deleted_by_us: set[str] = set()

    def reconcile(self) -> None:
        """One pass over all Jobs, then release pods whose Job is gone."""
        jobs, _ = self._store.select(r.JOB)
        for job in jobs:
            self._sync(job)
        uids = {job["metadata"]["uid"] for job in jobs}
        orphans, _ = self._store.select(
            r.POD, None, lambda p: _tracked(p) and _owner(p) not in uids
        )
        for pod in orphans:
            self._release(pod)

    def _sync(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        pods, _ = self._store.select(r.POD, meta["namespace"], lambda p: _owner(p) == meta["uid"])
        if meta.get("deletionTimestamp") or finished(job):
            for pod in pods:
                if not meta.get("deletionTimestamp"):
                    self._delete_pod(pod)  # a finished Job leaves nothing running
                if _terminal(pod):
                    self._release(pod)
            self._expire(job)
            return
        status = copy.deepcopy(job.get("status") or {})
        if spec.get("suspend"):
            self._suspend(job, pods, status)
        else:
            self._run(job, pods, status)
        self._write_status(job, status)

    def _suspend(
        self, job: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any]
    ) -> None:
        for pod in _active(pods):
            self._delete_pod(pod)
        for pod in pods:
            if _terminal(pod):
                self._release(pod)
        status.pop("startTime", None)
        status["active"], status["ready"] = 0, 0
        if not condition_true(job, "Suspended"):
            record_event(self._store, job, "Normal", "Suspended", "Job suspended", _COMPONENT)
        _set_condition(status, "Suspended", True, "JobSuspended", "Job suspended")

    def _run(self, job: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any]) -> None:
        spec = job["spec"]
        if condition_true(job, "Suspended"):
            _set_condition(status, "Suspended", False, "JobResumed", "Job resumed")
            record_event(self._store, job, "Normal", "Resumed", "Job resumed", _COMPONENT)
        status.setdefault("startTime", clock.timestamp())
        fail_message = self._count_finished(job, pods, status)
        failure = self._failure(job, status, fail_message)
        active = _active(pods)
        terminating = [
            p for p in pods if p["metadata"].get("deletionTimestamp") and not _terminal(p)
        ]
        status["active"] = len(active)
        status["ready"] = sum(1 for pod in active if _ready(pod))
        status.setdefault("succeeded", 0)
        status.setdefault("failed", 0)
        if failure:
            _set_condition(status, "FailureTarget", True, *failure)
            for pod in active:
                self._delete_pod(pod)
            if not active and not terminating:
                _set_condition(status, "Failed", True, *failure)
                record_event(self._store, job, "Warning", failure[0], failure[1], _COMPONENT)
            return
        if _succeeded(spec, status) >= int(spec.get("completions", 1)):
            _set_condition(status, "SuccessCriteriaMet", True, "CompletionsReached",
                           "Reached expected number of succeeded pods")  # fmt: skip
            if not active and not terminating:
                _set_condition(status, "Complete", True, "CompletionsReached",
                               "Reached expected number of succeeded pods")  # fmt: skip
                status["completionTime"] = clock.timestamp()
                record_event(self._store, job, "Normal", "Completed", "Job completed", _COMPONENT)
            return
        self._create_pods(job, status, active, terminating)

    def _count_finished(
        self, job: dict[str, Any], pods: list[dict[str, Any]], status: dict[str, Any]
    ) -> str:
        """Count each finished pod once; the first ``FailJob`` message, if any."""
        fail_message = ""
        for pod in pods:
            if not (_terminal(pod) and _tracked(pod)):
                continue
            uid = pod["metadata"]["uid"]
            if uid in self._deleted_by_us:
                pass
            elif pod["status"]["phase"] == "Succeeded":
                status["succeeded"] = int(status.get("succeeded", 0)) + 1
                index = _index_of(pod)
                if index is not None:
                    done = _completed(status) | {index}
                    status["completedIndexes"] = ",".join(str(i) for i in sorted(done))
            else:
                verdict = judge(job, pod)
                if verdict.action == "FailJob":
                    fail_message = fail_message or verdict.message
                if verdict.action in ("FailJob", "Count"):
                    status["failed"] = int(status.get("failed", 0)) + 1
            self._release(pod)
        return fail_message

    @staticmethod
    def _failure(
        job: dict[str, Any], status: dict[str, Any], fail_message: str
    ) -> tuple[str, str] | None:
        conditions = status.get("conditions") or []
        target = next((c for c in conditions if c["type"] == "FailureTarget"), None)
        if target and target["status"] == "True":
            return target.get("reason", ""), target.get("message", "")
        if fail_message:
            return "PodFailurePolicy", fail_message
        if int(status.get("failed", 0)) > int(job["spec"].get("backoffLimit", 6)):
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = job["spec"].get("activeDeadlineSeconds")
        if deadline is not None and clock.seconds_since(status["startTime"]) >= int(deadline):
            return "DeadlineExceeded", "Job was active longer than specified deadline"
        return None

    def _create_pods(
        self,
        job: dict[str, Any],
        status: dict[str, Any],
        active: list[dict[str, Any]],
        terminating: list[dict[str, Any]],
    ) -> None:
        spec = job["spec"]
        remaining = int(spec.get("completions", 1)) - _succeeded(spec, status)
        wanted = min(int(spec.get("parallelism", 1)), remaining) - len(active)
        if spec.get("podReplacementPolicy") == "Failed":
            wanted -= len(terminating)  # wait until the old pod is fully gone
        indexes: list[int | None] = [None] * max(0, wanted)
        if spec.get("completionMode") == "Indexed":
            taken = _completed(status) | {_index_of(p) for p in [*active, *terminating]}
            free = [i for i in range(int(spec.get("completions", 1))) if i not in taken]
            indexes = list(free[: max(0, wanted)])
        for index in indexes:
            pod = self._store.create(r.POD, job["metadata"]["namespace"], pod_for(job, index))
            status["active"] = int(status.get("active", 0)) + 1
            record_event(self._store, job, "Normal", "SuccessfulCreate",
                         f"Created pod: {pod['metadata']['name']}", _COMPONENT)  # fmt: skip

    def _write_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        uid = job["metadata"]["uid"]

        def write(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == uid:
                obj["status"] = status

        self._store.mutate(r.JOB, job["metadata"]["namespace"], job["metadata"]["name"], write)

    def _expire(self, job: dict[str, Any]) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        meta = job["metadata"]
        done = condition_true(job, "Complete") or condition_true(job, "Failed")
        if ttl is None or not done or meta.get("deletionTimestamp"):
            return
        if clock.seconds_since(done["lastTransitionTime"]) >= int(ttl):
            options = DeleteOptions(propagation="Foreground", uid=meta["uid"])
            self._store.delete(r.JOB, meta["namespace"], meta["name"], options)

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or _terminal(pod):
            return
        self._deleted_by_us.add(meta["uid"])
        self._store.delete(r.POD, meta["namespace"], meta["name"], _BACKGROUND)

    def _release(self, pod: dict[str, Any]) -> None:
        def drop(obj: dict[str, Any]) -> None:
            finalizers = obj["metadata"].get("finalizers") or []
            obj["metadata"]["finalizers"] = [f for f in finalizers if f != TRACKING_FINALIZER]

        if _tracked(pod):
            self._store.mutate(r.POD, pod["metadata"]["namespace"], pod["metadata"]["name"], drop)


def pod_for(job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    """A new pod from the Job's template, owned and tracked by the Job (``index``: the
    completion index of an Indexed Job's pod)."""
    meta, template = job["metadata"], copy.deepcopy(job["spec"]["template"])
    template_meta = template.get("metadata") or {}
    labels, annotations = template_meta.get("labels") or {}, template_meta.get("annotations") or {}
    prefix = meta["name"]
    if index is not None:
        prefix = f"{meta['name']}-{index}"
        labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
        template["spec"].setdefault("hostname", prefix)
        for container in template["spec"].get("containers") or []:
            env = [e for e in container.get("env") or [] if e["name"] != "JOB_COMPLETION_INDEX"]
            container["env"] = [
                {
                    "name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}
                    },
                },
                *env,
            ]
    return {
        "metadata": {
            "generateName": f"{prefix}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
            "finalizers": [TRACKING_FINALIZER],
        },
        "spec": template["spec"],
    }  # fmt: skip


def _set_condition(
    status: dict[str, Any], kind: str, true: bool, reason: str, message: str
) -> None:
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == kind), None)
    wanted = ("True" if true else "False", reason, message)
    if old is not None and (old["status"], old.get("reason", ""), old.get("message", "")) == wanted:
        return  # unchanged: keep its timestamps
    fresh = condition(kind, true, reason, message, old)
    fresh["lastProbeTime"] = clock.timestamp()
    if old is None:
        conditions.append(fresh)
    else:
        conditions[conditions.index(old)] = fresh


def _index_of(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)
    return int(value) if value is not None and str(value).isdigit() else None


def _completed(status: dict[str, Any]) -> set[int]:
    text = str(status.get("completedIndexes") or "")
    return {int(part) for part in text.split(",") if part.isdigit()}


def _succeeded(spec: dict[str, Any], status: dict[str, Any]) -> int:
    """Succeeded pods (NonIndexed) or succeeded indexes (Indexed)."""
    if spec.get("completionMode") == "Indexed":
        return len(_completed(status))
    return int(status.get("succeeded", 0))


def _owner(pod: dict[str, Any]) -> str:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return str(ref["uid"])
    return ""


def _tracked(pod: dict[str, Any]) -> bool:
    return TRACKING_FINALIZER in (pod["metadata"].get("finalizers") or [])


def _terminal(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in _TERMINAL


def _active(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not _terminal(p) and not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
