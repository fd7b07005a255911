"""The JobSet controller (``jobset.x-k8s.io/v1alpha2``), as JobSet's docs describe it.

Per JobSet: a headless Service named after ``spec.network.subdomain`` (default: the
JobSet's name) selecting its pods, with ``publishNotReadyAddresses``; for each
replicated Job ``rj`` and index ``i`` < ``replicas`` a Job ``<jobset>-<rj>-<i>`` from
its template, ``completionMode: Indexed`` and the pod's ``restartPolicy: OnFailure``
unless the template says otherwise (JobSet's webhook defaults), the pod template's
``subdomain`` set (``enableDNSHostnames``, default true), and JobSet's labels and
annotations (``jobset.sigs.k8s.io/jobset-name``, ``replicatedjob-name``, ``job-index``,
``job-global-index``, ``replicatedjob-replicas``, ``global-replicas``, ``job-key``,
``restart-attempt``) on the Job and its pods, owned by the JobSet. ``spec.suspend`` is
passed on to the Jobs. Status: ``replicatedJobsStatus``, ``Suspended``; ``Failed``
(``terminalState: Failed``) as soon as a Job fails, with the active Jobs deleted
(``failurePolicy`` restarts are not modelled: tuneship asks for none); ``Completed``
when every Job completed. ``ttlSecondsAfterFinished`` deletes a finished JobSet.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from tuneship.testing.kube import clock
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.jobs import condition_true
from tuneship.testing.kube.podstatus import condition
from tuneship.testing.kube.recorder import record_event
from tuneship.testing.kube.store import DeleteOptions, ObjectStore

PREFIX = "jobset.sigs.k8s.io/"
JOBSET_NAME = PREFIX + "jobset-name"
_COMPONENT = "jobset-controller"


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def set_condition(status: dict[str, Any], kind: str, true: bool, reason: str, message: str) -> bool:
    """A ``metav1.Condition`` in ``status``; True when it changed."""
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == kind), None)
    wanted = "True" if true else "False"
    if old is not None and (old["status"], old.get("reason")) == (wanted, reason):
        return False
    fresh = condition(kind, true, reason, message, old)
    fresh.pop("lastProbeTime", None)
    if old is None:
        conditions.append(fresh)
    else:
        conditions[conditions.index(old)] = fresh
    return True


class JobSetController:
    """Reconciles every JobSet (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def reconcile(self) -> None:
        jobsets, _ = self._store.select(r.JOBSET)
        for jobset in jobsets:
            if jobset["metadata"].get("deletionTimestamp"):
                continue
            if _finished(jobset):
                self._expire(jobset)
                continue
            self._sync(jobset)

    def _sync(self, jobset: dict[str, Any]) -> None:
        meta, spec = jobset["metadata"], jobset["spec"]
        namespace = meta["namespace"]
        network = spec.get("network") or {}
        subdomain = network.get("subdomain") or meta["name"]
        if network.get("enableDNSHostnames", True):
            self._ensure_service(jobset, subdomain, network)
        owned = {
            j["metadata"]["name"]: j
            for j in self._store.select(r.JOB, namespace, lambda j: _owned(j, meta["uid"]))[0]
        }
        suspend = bool(spec.get("suspend"))
        replicated = spec.get("replicatedJobs") or []
        total = sum(int(rj.get("replicas", 1)) for rj in replicated)
        global_index = 0
        statuses = []
        for rj in replicated:
            counts = dict.fromkeys(("ready", "succeeded", "failed", "active", "suspended"), 0)
            for index in range(int(rj.get("replicas", 1))):
                name = f"{meta['name']}-{rj['name']}-{index}"
                job = owned.get(name)
                if job is None:
                    labels = _labels(jobset, rj, index, global_index, total)
                    job = self._create_job(jobset, rj, name, labels, subdomain, network, suspend)
                elif bool(job["spec"].get("suspend")) != suspend:
                    self._set_suspend(job, suspend)
                global_index += 1
                _count(job, counts)
            statuses.append({"name": rj["name"], **counts})
        self._write_status(jobset, statuses, list(owned.values()), suspend)

    def _ensure_service(self, jobset: dict[str, Any], name: str, network: dict[str, Any]) -> None:
        namespace = jobset["metadata"]["namespace"]
        if self._store.find(r.SERVICE, namespace, name) is not None:
            return
        service = {
            "metadata": {"name": name, "namespace": namespace,
                         "ownerReferences": [owner_reference(jobset)]},
            "spec": {"clusterIP": "None",
                     "selector": {JOBSET_NAME: jobset["metadata"]["name"]},
                     "publishNotReadyAddresses": network.get("publishNotReadyAddresses", True)},
        }  # fmt: skip
        try:
            self._store.create(r.SERVICE, namespace, service)
        except ApiError as error:
            if error.reason != "AlreadyExists":
                raise

    def _create_job(
        self, jobset: dict[str, Any], rj: dict[str, Any], name: str, labels: dict[str, str],
        subdomain: str, network: dict[str, Any], suspend: bool,
    ) -> dict[str, Any]:  # fmt: skip
        template = copy.deepcopy(rj["template"])
        job_meta = template.get("metadata") or {}
        spec = template["spec"]
        spec.setdefault("completionMode", "Indexed")
        spec["suspend"] = suspend
        pod = spec.setdefault("template", {})
        pod_meta = pod.setdefault("metadata", {})
        pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
        pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), **labels}
        pod.setdefault("spec", {}).setdefault("restartPolicy", "OnFailure")  # JobSet's default
        if network.get("enableDNSHostnames", True):
            pod["spec"]["subdomain"] = subdomain
        job = {
            "metadata": {
                "name": name, "namespace": jobset["metadata"]["namespace"],
                "labels": {**(job_meta.get("labels") or {}), **labels},
                "annotations": {**(job_meta.get("annotations") or {}), **labels},
                "ownerReferences": [owner_reference(jobset)],
            },
            "spec": spec,
        }  # fmt: skip
        created = self._store.create(r.JOB, jobset["metadata"]["namespace"], job)
        record_event(self._store, jobset, "Normal", "SuccessfulCreate",
                     f"Created job: {name}", _COMPONENT)  # fmt: skip
        return created

    def _set_suspend(self, job: dict[str, Any], suspend: bool) -> None:
        uid = job["metadata"]["uid"]

        def change(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == uid:
                obj["spec"]["suspend"] = suspend

        self._store.mutate(r.JOB, job["metadata"]["namespace"], job["metadata"]["name"], change)

    def _write_status(
        self, jobset: dict[str, Any], statuses: list[dict[str, Any]],
        jobs: list[dict[str, Any]], suspend: bool,
    ) -> None:  # fmt: skip
        status = copy.deepcopy(jobset.get("status") or {})
        status.setdefault("restarts", 0)
        status["replicatedJobsStatus"] = statuses
        set_condition(status, "Suspended", suspend, "SuspendedJobs" if suspend else "ResumeJobs",
                      "jobset is suspended" if suspend else "jobset is resumed")  # fmt: skip
        failed = [j for j in jobs if condition_true(j, "Failed")]
        expected = sum(1 for _ in jobs)
        total = sum(int(rj.get("replicas", 1)) for rj in jobset["spec"].get("replicatedJobs") or [])
        if failed:
            message = (
                f"jobset failed due to one or more job failures: {failed[0]['metadata']['name']}"
            )
            if set_condition(status, "Failed", True, "FailedJobs", message):
                record_event(self._store, jobset, "Warning", "FailedJobs", message, _COMPONENT)
            status["terminalState"] = "Failed"
            for job in jobs:
                if not condition_true(job, "Failed") and not condition_true(job, "Complete"):
                    meta = job["metadata"]
                    self._store.delete(r.JOB, meta["namespace"], meta["name"],
                                       DeleteOptions(propagation="Background"))  # fmt: skip
        elif expected == total and all(condition_true(j, "Complete") for j in jobs):
            set_condition(
                status, "Completed", True, "AllJobsCompleted", "jobset completed successfully"
            )
            status["terminalState"] = "Completed"
            record_event(self._store, jobset, "Normal", "AllJobsCompleted",
                         "jobset completed successfully", _COMPONENT)  # fmt: skip
        uid = jobset["metadata"]["uid"]

        def write(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == uid:
                obj["status"] = status

        if status != jobset.get("status"):
            meta = jobset["metadata"]
            self._store.mutate(r.JOBSET, meta["namespace"], meta["name"], write)

    def _expire(self, jobset: dict[str, Any]) -> None:
        ttl = jobset["spec"].get("ttlSecondsAfterFinished")
        meta = jobset["metadata"]
        done = [c for c in (jobset.get("status") or {}).get("conditions") or []
                if c["type"] in ("Completed", "Failed") and c["status"] == "True"]  # fmt: skip
        if ttl is None or not done:
            return
        if clock.seconds_since(done[0]["lastTransitionTime"]) >= int(ttl):
            options = DeleteOptions(propagation="Foreground", uid=meta["uid"])
            self._store.delete(r.JOBSET, meta["namespace"], meta["name"], options)


def _labels(
    jobset: dict[str, Any], rj: dict[str, Any], index: int, global_index: int, total: int
) -> dict[str, str]:
    name, namespace = jobset["metadata"]["name"], jobset["metadata"]["namespace"]
    job_name = f"{name}-{rj['name']}-{index}"
    return {
        JOBSET_NAME: name,
        PREFIX + "jobset-uid": jobset["metadata"]["uid"],
        PREFIX + "replicatedjob-name": rj["name"],
        PREFIX + "replicatedjob-replicas": str(rj.get("replicas", 1)),
        PREFIX + "global-replicas": str(total),
        PREFIX + "job-index": str(index),
        PREFIX + "job-global-index": str(global_index),
        PREFIX + "job-key": hashlib.sha1(f"{namespace}/{job_name}".encode()).hexdigest(),
        PREFIX + "restart-attempt": "0",
    }


def _owned(job: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])


def _count(job: dict[str, Any], counts: dict[str, int]) -> None:
    status = job.get("status") or {}
    if condition_true(job, "Complete"):
        counts["succeeded"] += 1
    elif condition_true(job, "Failed"):
        counts["failed"] += 1
    elif job["spec"].get("suspend"):
        counts["suspended"] += 1
    else:
        counts["active"] += 1 if status.get("active") else 0
        wanted = min(int(job["spec"].get("parallelism", 1)), int(job["spec"].get("completions", 1)))
        counts["ready"] += 1 if int(status.get("ready", 0)) >= wanted else 0


def _finished(jobset: dict[str, Any]) -> bool:
    return bool((jobset.get("status") or {}).get("terminalState"))
