"""The ``k8s-job`` provider: one ``batch/v1`` Job per stage attempt (GPU stages).

The Job's name is a hash of the task id, so creating it again after a controller
restart answers ``AlreadyExists`` and the controller re-attaches to it. Its pod runs
``tuneship serve COMPONENT --once``; once the pod is Ready the controller dials the pod
IP with the usual ``StageRequest``. While Kueue keeps the Job suspended the stage is
*queued* (no heartbeat timeout: the call sends keepalives); a pod that no node can take
for ``unschedulable_timeout_s`` fails the attempt with ``UNAVAILABLE`` (retried). When
the pod dies mid-stage its status says why: preempted or evicted → ``UNAVAILABLE``
(the retry resumes from the store checkpoint); OOMKilled → failed, naming the memory
limit and the spec fields that use less memory; the invalid-input exit code → failed
at once. A failed or cancelled attempt's Job is deleted so it holds no GPU. A training
with ``train.nodes`` > 1 runs as a JobSet or TrainJob instead (``k8s_multinode.py``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tuneship.common.events import Event, Log
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.controller.providers.informer import Informer
from tuneship.controller.providers.kube import (
    JOB_NAME_LABEL,
    TASK_ANNOTATION,
    WORKER_CONTAINER,
    KubeSettings,
    attempt_selector,
    condition,
    grpc_port,
    is_true,
    job_manifest,
    job_name,
)
from tuneship.controller.providers.multinode import Training, topology
from tuneship.controller.providers.podfailure import IMAGE_ERRORS, api_failure, pod_failure
from tuneship.controller.providers.readiness import until_ready
from tuneship.controller.scheduler import Numbered, StageFailure, Waiting
from tuneship.controller.wire_clients import Channels, GrpcStageCall, start_stage

if TYPE_CHECKING:
    from tuneship.controller.providers.k8s_multinode import MultiNodeStageCall

log = logging.getLogger("tuneship.controller.k8s")


class JobWorkloads:
    """The Jobs and pods of this controller's attempts, watched once for every stage."""

    def __init__(self, settings: KubeSettings, api: client.ApiClient) -> None:
        self.settings = settings
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        namespace = settings.namespace
        selector = attempt_selector(settings.job_templates.values())
        self.jobs = Informer(self.batch.list_namespaced_job, namespace, selector, what="jobs")
        self.pods = Informer(self.core.list_namespaced_pod, namespace, selector, what="pods")
        self.custom = client.CustomObjectsApi(api)
        self.networking = client.NetworkingV1Api(api)
        self.training = Training.of(settings.multinode.kind)
        self.trainings = Informer(
            functools.partial(self.custom.list_namespaced_custom_object, self.training.group,
                              self.training.version, plural=self.training.plural),
            namespace, selector, what=self.training.plural,
        )  # fmt: skip
        self._started = False
        self._trainings_started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self.jobs.start()
                self.pods.start()
                self._started = True

    def start_trainings(self) -> None:
        """Watch the JobSets (or TrainJobs) too: only once a training on more than one
        node runs, so that a cluster without their CRD is never asked about them."""
        self.start()
        with self._lock:
            if not self._trainings_started:
                self.trainings.start()
                self._trainings_started = True

    def stop(self) -> None:
        self.jobs.stop()
        self.pods.stop()
        self.trainings.stop()

    def delete_training(self, name: str) -> bool:
        """Delete the JobSet (TrainJob) ``name`` with its Jobs and pods; False when gone."""
        kind = self.training
        try:
            self.custom.delete_namespaced_custom_object(
                kind.group, kind.version, self.settings.namespace, kind.plural, name,
                propagation_policy="Background",
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def pod_of(self, name: str) -> dict[str, Any] | None:
        """The newest pod of Job ``name`` (a Job may replace a disrupted pod)."""
        pods = [
            p for p in self.pods.items()
            if (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == name
        ]  # fmt: skip
        return max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)

    def delete(self, name: str) -> bool:
        """Delete Job ``name`` and its pods; False when it was already gone."""
        try:
            self.batch.delete_namespaced_job(
                name, self.settings.namespace, propagation_policy="Background"
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def why_waiting(self, name: str, workload: str = "job") -> str:
        """The newest event's message about Job ``name`` or its Kueue Workload (named
        ``job-<name>-<hash>``, ``jobset-`` or ``trainjob-`` for those kinds; Kueue puts
        "couldn't assign flavors ... insufficient quota" there); a Warning over a Normal
        one."""
        try:
            events = self.core.list_namespaced_event(
                self.settings.namespace, field_selector=f"involvedObject.name={name}"
            ).items
            workloads = self.core.list_namespaced_event(
                self.settings.namespace, field_selector="involvedObject.kind=Workload"
            ).items
        except ApiException:
            return ""
        events += [
            e for e in workloads if str(e.involved_object.name).startswith(f"{workload}-{name}-")
        ]  # fmt: skip
        if not events:
            return ""

        def rank(event: Any) -> tuple[bool, str, int]:
            when = str(event.last_timestamp or event.event_time or "")
            version = (event.metadata.resource_version or "0") if event.metadata else "0"
            return event.type == "Warning", when, int(version) if version.isdigit() else 0

        return str(max(events, key=rank).message or "")

    def log_tail(self, pod: str, container: str = WORKER_CONTAINER, lines: int = 20) -> str:
        try:
            text = self.core.read_namespaced_pod_log(
                pod, self.settings.namespace, container=container, tail_lines=lines
            )
        except ApiException:
            return ""
        return str(text).strip()


class JobProvider:
    """A Job per attempt of ``stage``, from the chart's template."""

    kind = "k8s-job"

    def __init__(self, stage: str, workloads: JobWorkloads, channels: Channels) -> None:
        self.stage, self.workloads, self.channels = stage, workloads, channels
        self.template = workloads.settings.job_templates[stage]
        self.port = grpc_port(self.template)

    def run(self, job: StageJob, reattach: bool) -> JobStageCall | MultiNodeStageCall:
        if topology(job).nodes > 1 and self.stage == "train":
            from tuneship.controller.providers.k8s_multinode import MultiNodeStageCall

            self.workloads.start_trainings()
            return MultiNodeStageCall(self, job)
        self.workloads.start()
        return JobStageCall(self, job)

    def cancel(self, task_id: str) -> bool:
        name = job_name(self.stage, task_id)
        gone = self.stage == "train" and self.workloads.delete_training(name)
        return self.workloads.delete(name) or gone

    def capacity(self) -> int | None:
        return None  # TUNESHIP_LIMITS caps Jobs in flight; Kueue and the cluster do the rest

    def address(self) -> str | None:
        return None

    def close(self) -> None:
        self.workloads.stop()


class JobStageCall:
    """One attempt: create (or re-attach to) its Job, wait for its pod, stream from it."""

    def __init__(self, provider: JobProvider, job: StageJob) -> None:
        self.provider, self.job = provider, job
        self.stage = provider.stage
        self.name = job_name(self.stage, job.task_id)
        self.workloads = provider.workloads
        self.settings = provider.workloads.settings
        self._inner: GrpcStageCall | None = None
        self._closing = threading.Event()
        self._why, self._asked_why = "", -1e9
        self._scheduled_at: float | None = None

    def cancel(self) -> None:
        """Stop following the attempt (shutdown or silence); the Job is left alone:
        a user's cancel deletes it through ``JobProvider.cancel``."""
        self._closing.set()
        if self._inner is not None:
            self._inner.cancel()

    def __iter__(self) -> Iterator[Event | Numbered | StageOutcome | Waiting | None]:
        try:
            self._create()
            pod = yield from until_ready(
                self._state, self._closing, self.workloads.pods,
                self.settings.unschedulable_timeout_s, f"job {self.name}",
            )  # fmt: skip
            yield Waiting("")
            yield Log(self.stage, f"running in pod {pod['metadata']['name']} of job {self.name}")
            address = f"{pod['status']['podIP']}:{self.provider.port}"
            self._inner = start_stage(self.provider.channels.get(address), self.stage, self.job)
            if self._closing.is_set():
                self._inner.cancel()
            try:
                yield from self._inner
            except StageFailure as failure:
                if not failure.retryable and failure.code != "CANCELLED":
                    # The worker said no retry can help: its pod exits on its own (exit 3
                    # fails the Job by its podFailurePolicy) and the Job keeps its logs.
                    self._closing.set()
                raise self._explain(failure) from failure
        except StageFailure:
            if not self._closing.is_set():
                self._delete_job()  # hold no GPU; a retry makes a new Job
            raise

    def _delete_job(self) -> None:
        try:
            self.workloads.delete(self.name)
        except Exception as error:  # the failure being raised matters more
            log.warning("could not delete job %s: %s", self.name, error)

    def _create(self) -> None:
        manifest = job_manifest(
            self.provider.template, self.stage, self.job.task_id, self.settings.namespace
        )
        try:
            self.workloads.batch.create_namespaced_job(self.settings.namespace, cast(Any, manifest))
            log.info("created job %s for task %s", self.name, self.job.task_id)
        except ApiException as error:
            if error.status != 409:
                raise api_failure(f"cannot create job {self.name}", error) from error
            try:
                existing = self.workloads.batch.read_namespaced_job(
                    self.name, self.settings.namespace
                )
            except ApiException as read_error:
                raise api_failure(f"cannot read job {self.name}", read_error) from read_error
            meta = existing.metadata
            owner = ((meta.annotations if meta else None) or {}).get(TASK_ANNOTATION)
            if owner != self.job.task_id:
                raise StageFailure(
                    "FAILED_PRECONDITION",
                    f"job {self.name} exists for another task ({owner})", False,
                ) from error  # fmt: skip
            log.info("re-attached to job %s (task %s)", self.name, self.job.task_id)

    def _state(self, started: float) -> tuple[str, dict[str, Any] | None]:
        """(why it waits, the Ready pod or None); raises when the attempt cannot go on."""
        job = self.workloads.jobs.get(self.name)
        if job is None:
            if time.monotonic() - started > 30:
                raise StageFailure("UNAVAILABLE", f"job {self.name} was deleted", True)
            return f"creating job {self.name}", None
        if (job.get("spec") or {}).get("suspend"):
            if time.monotonic() - self._asked_why > 15:  # events are listed, not watched
                self._why, self._asked_why = self.workloads.why_waiting(self.name), time.monotonic()
            why = self._why
            return f"queued: Kueue has not admitted job {self.name}" + (
                f" ({why})" if why else ""), None  # fmt: skip
        if is_true(job, "Failed"):
            raise self._job_failed(job)
        if is_true(job, "Complete"):
            raise StageFailure(
                "ABORTED", f"job {self.name} finished while the controller was away; "
                "the retry reuses its committed output", True,
            )  # fmt: skip
        pod = self.workloads.pod_of(self.name)
        if pod is None:
            return f"waiting for job {self.name} to create its pod", None
        return self._pod_state(pod, started)

    def _pod_state(self, pod: dict[str, Any], started: float) -> tuple[str, dict[str, Any] | None]:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        if status.get("phase") == "Failed":
            raise self._pod_failed(pod)
        scheduled = condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False":
            why = scheduled.get("message") or scheduled.get("reason")
            return f"waiting for a node: {why}", None
        for container in status.get("containerStatuses") or []:
            reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in IMAGE_ERRORS:
                message = container["state"]["waiting"].get("message", "")
                raise StageFailure(
                    "FAILED_PRECONDITION",
                    f"pod {name} cannot start its container: {reason}: {message}", False,
                )  # fmt: skip
        if is_true(pod, "Ready") and status.get("podIP"):
            return "", pod
        # Counted from the scheduling of this pod: time queued in Kueue or waiting for a
        # node has its own rules (none; unschedulable_timeout_s).
        self._scheduled_at = self._scheduled_at or time.monotonic()
        if time.monotonic() - self._scheduled_at > self.settings.start_timeout_s:
            raise StageFailure(
                "UNAVAILABLE", f"pod {name} was not Ready "
                f"{self.settings.start_timeout_s:.0f}s after it was scheduled", True,
            )  # fmt: skip
        return f"starting pod {name}", None

    def _explain(self, failure: StageFailure) -> StageFailure:
        """Why the stream broke, from the pod's status (which may lag a moment)."""
        if failure.code not in ("UNAVAILABLE", "CANCELLED", "UNKNOWN"):
            return failure  # the worker said why (INVALID_ARGUMENT, INTERNAL...): its words
        if self._closing.is_set():
            return failure
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pod = self.workloads.pod_of(self.name)
            if pod is None or (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                break
            if is_true(pod, "DisruptionTarget"):
                break
            self.workloads.pods.wait(0.5)
        pod = self.workloads.pod_of(self.name)
        if pod is None:
            return StageFailure("UNAVAILABLE", f"the pod of job {self.name} is gone", True)
        if is_true(pod, "DisruptionTarget") or pod.get("status", {}).get("phase") == "Failed":
            return self._pod_failed(pod)
        return failure

    def _pod_failed(self, pod: dict[str, Any]) -> StageFailure:
        return pod_failure(self.workloads, pod)

    def _job_failed(self, job: dict[str, Any]) -> StageFailure:
        failed = condition(job, "Failed") or {}
        pod = self.workloads.pod_of(self.name)
        if pod is not None and (pod.get("status") or {}).get("phase") == "Failed":
            return self._pod_failed(pod)
        reason = failed.get("reason", "")
        message = f"job {self.name} failed: {reason}: {failed.get('message', '')}"
        return StageFailure("DEADLINE_EXCEEDED" if reason == "DeadlineExceeded" else "UNAVAILABLE",
                            message, True)  # fmt: skip
