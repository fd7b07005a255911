"""Kueue, reduced to what a Job's owner sees: admission of Jobs, JobSets and TrainJobs
labelled with ``kueue.x-k8s.io/queue-name`` (Kueue's batch/v1 Job, JobSet and Kubeflow
Trainer integrations; the owner creates the last two suspended).

Kueue's webhook (``admission.default``) creates such Jobs suspended. Here, a queued
Job is admitted (``spec.suspend=false``, Event ``Started``) at once unless
``knobs.kueue_hold`` is set; while held it stays suspended with a ``Pending`` Event
carrying ``knobs.kueue_message``, until the hold is lifted or ``admit()`` lets it
through. A queued Job someone un-suspends without admission is suspended again, as
Kueue does. There are no Workload, ClusterQueue or ResourceFlavor objects.
"""

from __future__ import annotations

from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.admission import QUEUE_LABEL
from tuneship.testing.kube.jobs import finished
from tuneship.testing.kube.recorder import record_event
from tuneship.testing.kube.scheduler import ClusterKnobs
from tuneship.testing.kube.store import ObjectStore, random_suffix

_COMPONENT = "kueue-admission"


class Kueue:
    """Admits queued Jobs (see the module docstring)."""

    def __init__(self, store: ObjectStore, knobs: ClusterKnobs) -> None:
        self._store, self._knobs = store, knobs
        self._admitted: set[str] = set()
        self._seen: set[str] = set()

    def reconcile(self) -> None:
        """One pass over the queued Jobs, JobSets and TrainJobs."""
        jobs = [j for kind in QUEUED_KINDS for j in self._store.select(kind, None, _queued)[0]]
        for job in jobs:
            meta = job["metadata"]
            if _done(job) or meta.get("deletionTimestamp") or meta["uid"] in self._admitted:
                continue
            if meta["uid"] not in self._seen:
                self._seen.add(meta["uid"])
                workload = f"{job['kind'].lower()}-{meta['name']}-{random_suffix()}"
                record_event(self._store, job, "Normal", "CreatedWorkload",
                             f"Created Workload: {meta['namespace']}/{workload}",
                             "kueue-job-controller")  # fmt: skip
            if not job["spec"].get("suspend"):
                self._set_suspend(job, True)
            elif self._knobs.kueue_hold:
                if not _said_pending(self._store, job):
                    message = self._knobs.kueue_message
                    record_event(self._store, job, "Warning", "Pending", message, _COMPONENT)
            else:
                self.admit(job)

    def admit(self, job: dict[str, Any]) -> None:
        """Admit a queued Job now (hold or not)."""
        self._admitted.add(job["metadata"]["uid"])
        self._set_suspend(job, False)
        record_event(self._store, job, "Normal", "Started",
                     "Admitted by clusterQueue cluster-queue", "kueue-job-controller")  # fmt: skip

    def _set_suspend(self, job: dict[str, Any], suspend: bool) -> None:
        uid = job["metadata"]["uid"]

        def change(obj: dict[str, Any]) -> None:
            if obj["metadata"]["uid"] == uid:
                obj["spec"]["suspend"] = suspend

        rtype = r.by_kind(job["apiVersion"], job["kind"]) or r.JOB
        self._store.mutate(rtype, job["metadata"]["namespace"], job["metadata"]["name"], change)


QUEUED_KINDS = (r.JOB, r.JOBSET, r.TRAINJOB)


def _done(obj: dict[str, Any]) -> bool:
    if obj.get("kind") == "Job":
        return finished(obj)
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Completed", "Failed") and c["status"] == "True"
               for c in conditions)  # fmt: skip


def _queued(job: dict[str, Any]) -> bool:
    return QUEUE_LABEL in (job["metadata"].get("labels") or {})


def _said_pending(store: ObjectStore, job: dict[str, Any]) -> bool:
    uid = job["metadata"]["uid"]
    events, _ = store.select(r.EVENT, job["metadata"]["namespace"],
                           lambda e: e["involvedObject"].get("uid") == uid
                           and e["reason"] == "Pending")  # fmt: skip
    return bool(events)
