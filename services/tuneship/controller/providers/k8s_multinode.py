"""One attempt of a training on more than one node: a JobSet (or Kubeflow TrainJob) of
``train.nodes`` pods, dialled at the pod of node rank 0 exactly as a one-node Job pod.

The object is named as the attempt's Job would be (a hash of the task id), so
``AlreadyExists`` after a controller restart means re-attach. Until rank 0's pod is
Ready the stage is *queued* (Kueue keeps the object suspended) or *waiting* (a node
pod unschedulable, pods starting), with the same timeouts as a Job pod. While the
stage streams, every node is watched: a node's pod that fails or is disrupted fails the
attempt with ``UNAVAILABLE`` at once (its peers would otherwise wait for it until the
collective timeout), and the retry resumes from the store checkpoint. A failed or
cancelled attempt's object is deleted, with its Jobs and pods, so it holds no GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
from kubernetes.client.exceptions import ApiException

from tuneship.common.events import Event, Log
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.controller.providers.kube import (
    TASK_ANNOTATION,
    TASK_LABEL,
    condition,
    is_true,
    job_name,
    task_digest,
)
from tuneship.controller.providers.multinode import (
    COMPLETION_INDEX,
    JOBSET,
    jobset_manifest,
    network_policy,
    procs_per_node,
    topology,
    trainjob_manifest,
)
from tuneship.controller.providers.podfailure import IMAGE_ERRORS, api_failure, pod_failure
from tuneship.controller.providers.readiness import until_ready
from tuneship.controller.scheduler import Numbered, StageFailure, Waiting
from tuneship.controller.wire_clients import GrpcStageCall, start_stage

if TYPE_CHECKING:
    from tuneship.controller.providers.k8s_job import JobProvider

log = logging.getLogger("tuneship.controller.k8s")


class MultiNodeStageCall:
    """One attempt on ``train.nodes`` nodes (see the module docstring)."""

    def __init__(self, provider: JobProvider, job: StageJob) -> None:
        self.provider, self.job = provider, job
        self.stage = provider.stage
        self.name = job_name(self.stage, job.task_id)
        self.digest = task_digest(job.task_id)
        self.workloads = provider.workloads
        self.settings = provider.workloads.settings
        self.kind = self.workloads.training
        self.nodes = topology(job).nodes
        self._inner: GrpcStageCall | None = None
        self._closing = threading.Event()
        self._broken: StageFailure | None = None
        self._why, self._asked_why = "", -1e9
        self._scheduled_at: float | None = None

    def cancel(self) -> None:
        """Stop following the attempt; the object is left alone (a user's cancel
        deletes it through ``JobProvider.cancel``)."""
        self._closing.set()
        if self._inner is not None:
            self._inner.cancel()

    def __iter__(self) -> Iterator[Event | Numbered | StageOutcome | Waiting | None]:
        try:
            self._check_size()
            self._create()
            pod = yield from until_ready(
                self._state, self._closing, self.workloads.pods,
                self.settings.unschedulable_timeout_s, f"a pod of {self.kind.kind} {self.name}",
            )  # fmt: skip
            address = f"{pod['status']['podIP']}:{self.provider.port}"
            yield from self._wait_for_server(address)
            yield Waiting("")
            yield Log(self.stage, f"running on {self.nodes} nodes: {self.kind.kind} {self.name}, "
                                  f"node 0 in pod {pod['metadata']['name']}")  # fmt: skip
            self._inner = start_stage(self.provider.channels.get(address), self.stage, self.job)
            if self._closing.is_set():
                self._inner.cancel()
            yield from self._stream()
        except StageFailure:
            if not self._closing.is_set():
                self._delete()  # hold no GPU; a retry makes a new one
            raise

    def _check_size(self) -> None:
        most = self.settings.multinode.max_nodes
        if self.nodes > most:
            raise StageFailure(
                "INVALID_ARGUMENT",
                f"train.nodes: {self.nodes} is more than this installation allows ({most}: "
                "the chart's trainer.multiNode.maxNodes)", False,
            )  # fmt: skip

    def _stream(self) -> Iterator[Event | Numbered | StageOutcome | Waiting | None]:
        assert self._inner is not None
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_nodes, args=(done,), daemon=True,
                                   name=f"nodes-{self.name}")  # fmt: skip
        watcher.start()
        try:
            yield from self._inner
        except StageFailure as failure:
            done.set()
            broken = self._broken or self._node_lost(failure)
            if broken is not None:
                raise broken from failure
            if not failure.retryable and failure.code != "CANCELLED":
                self._closing.set()  # rank 0 said no retry can help; its pod exits 3
            raise
        finally:
            done.set()

    def _watch_nodes(self, done: threading.Event) -> None:
        """Cancel the stream as soon as any node's pod fails or is disrupted."""
        while not done.is_set() and not self._closing.is_set():
            broken = self._failed_node()
            if broken is not None:
                self._broken = broken
                if self._inner is not None:
                    self._inner.cancel()
                return
            self.workloads.pods.wait(0.5)

    def _node_lost(self, failure: StageFailure) -> StageFailure | None:
        """When node 0's stream broke, whether another node's loss is why: its peers'
        collectives fail as soon as one node is gone, and the pod status saying so may
        lag a moment behind."""
        if self._closing.is_set() or failure.code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
            return None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            broken = self._failed_node()
            if broken is not None:
                return broken
            self.workloads.pods.wait(0.5)
        return None

    def _failed_node(self) -> StageFailure | None:
        for pod in self._pods():
            if (pod.get("status") or {}).get("phase") == "Failed" or is_true(
                pod, "DisruptionTarget"
            ):
                found = pod_failure(self.workloads, pod)
                message = f"node {_rank(pod)} of {self.kind.kind} {self.name}: {found.message}"
                return StageFailure(found.code, message, found.retryable)
        return None

    def _delete(self) -> None:
        try:
            self.workloads.delete_training(self.name)
        except Exception as error:  # the failure being raised matters more
            log.warning("could not delete %s %s: %s", self.kind.kind, self.name, error)

    def _create(self) -> None:
        build = jobset_manifest if self.kind is JOBSET else trainjob_manifest
        template = self.provider.template
        procs = procs_per_node(template, topology(self.job).devices)
        manifest = build(template, self.stage, self.job, self.settings.namespace, self.nodes,
                         self.settings.multinode, procs)  # fmt: skip
        kind, namespace = self.kind, self.settings.namespace
        created: dict[str, Any]
        try:
            created = self.workloads.custom.create_namespaced_custom_object(  # type: ignore[assignment]
                kind.group, kind.version, namespace, kind.plural, manifest
            )
            log.info("created %s %s for task %s", kind.kind, self.name, self.job.task_id)
        except ApiException as error:
            if error.status != 409:
                raise api_failure(f"cannot create {kind.kind} {self.name}", error) from error
            try:
                created = self.workloads.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                    kind.group, kind.version, namespace, kind.plural, self.name
                )
            except ApiException as read_error:
                raise api_failure(
                    f"cannot read {kind.kind} {self.name}", read_error
                ) from read_error
            owner = (created["metadata"].get("annotations") or {}).get(TASK_ANNOTATION)
            if owner != self.job.task_id:
                raise StageFailure(
                    "FAILED_PRECONDITION",
                    f"{kind.kind} {self.name} exists for another task ({owner})", False,
                ) from error  # fmt: skip
            log.info("re-attached to %s %s (task %s)", kind.kind, self.name, self.job.task_id)
        self._allow_peers(created)

    def _allow_peers(self, owner: dict[str, Any]) -> None:
        """The NetworkPolicy that lets this training's pods reach each other (the chart's
        template; rendezvous and NCCL ports), deleted with the object that owns it."""
        template = self.settings.multinode.network_policy
        if template is None:
            return
        policy = network_policy(template, owner, self.digest)
        try:
            self.workloads.networking.create_namespaced_network_policy(
                self.settings.namespace, cast(Any, policy)
            )
        except ApiException as error:
            if error.status != 409:
                raise api_failure(f"cannot create NetworkPolicy {self.name}", error) from error

    def _state(self, started: float) -> tuple[str, dict[str, Any] | None]:
        """(why it waits, node 0's Ready pod or None); raises when it cannot go on."""
        kind = self.kind.kind
        obj = self.workloads.trainings.get(self.name)
        if obj is None:
            if time.monotonic() - started > 30:
                raise StageFailure("UNAVAILABLE", f"{kind} {self.name} was deleted", True)
            return f"creating {kind} {self.name}", None
        if (obj.get("spec") or {}).get("suspend"):
            if time.monotonic() - self._asked_why > 15:  # events are listed, not watched
                self._why = self.workloads.why_waiting(self.name, kind.lower())
                self._asked_why = time.monotonic()
            why = f" ({self._why})" if self._why else ""
            return f"queued: Kueue has not admitted {kind} {self.name}{why}", None
        pods = self._pods()
        for pod in pods:
            if (pod.get("status") or {}).get("phase") == "Failed":
                raise pod_failure(self.workloads, pod)
        if is_true(obj, "Failed"):
            found = condition(obj, "Failed") or {}
            raise StageFailure("UNAVAILABLE", f"{kind} {self.name} failed: "
                               f"{found.get('message', '')}", True)  # fmt: skip
        if is_true(obj, "Completed") or is_true(obj, "Complete"):
            raise StageFailure(
                "ABORTED", f"{kind} {self.name} finished while the controller was away; "
                "the retry reuses its committed output", True,
            )  # fmt: skip
        return self._pods_state(pods)

    def _pods_state(self, pods: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
        if len({_rank(p) for p in pods}) < self.nodes:
            return f"waiting for {self.kind.kind} {self.name} to create its {self.nodes} pods", None
        for pod in pods:
            status, name = pod.get("status") or {}, pod["metadata"]["name"]
            scheduled = condition(pod, "PodScheduled")
            if scheduled and scheduled.get("status") == "False":
                why = scheduled.get("message") or scheduled.get("reason")
                return f"waiting for a node: pod {name}: {why}", None
            for container in status.get("containerStatuses") or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in IMAGE_ERRORS:
                    raise StageFailure(
                        "FAILED_PRECONDITION", f"pod {name} cannot start its container: "
                        f"{waiting['reason']}: {waiting.get('message', '')}", False,
                    )  # fmt: skip
        first = max((p for p in pods if _rank(p) == "0"),
                    key=lambda p: p["metadata"].get("creationTimestamp", ""))  # fmt: skip
        if is_true(first, "Ready") and (first.get("status") or {}).get("podIP"):
            return "", first
        self._scheduled_at = self._scheduled_at or time.monotonic()
        if time.monotonic() - self._scheduled_at > self.settings.start_timeout_s:
            raise StageFailure(
                "UNAVAILABLE", f"pod {first['metadata']['name']} (node 0) was not Ready "
                f"{self.settings.start_timeout_s:.0f}s after it was scheduled", True,
            )  # fmt: skip
        return f"starting the pods of {self.kind.kind} {self.name}", None

    def _wait_for_server(self, address: str) -> Generator[Waiting | None, None, None]:
        """A TrainJob's runtime gives its container no readiness probe: Ready then only
        means started, so wait until node 0's server accepts connections."""
        channel = self.provider.channels.get(address)
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not _ready(channel):
            if self._closing.is_set():
                raise StageFailure("CANCELLED", f"stopped following {self.name}", False)
            for pod in self._pods():
                if (pod.get("status") or {}).get("phase") == "Failed":
                    raise pod_failure(self.workloads, pod)
            if time.monotonic() > deadline:
                raise StageFailure(
                    "UNAVAILABLE", f"node 0 of {self.name} never served at {address}", True
                )
            yield None

    def _pods(self) -> list[dict[str, Any]]:
        """The current pods of this training (a replaced pod: the newest of its rank)."""
        newest: dict[str, dict[str, Any]] = {}
        for pod in self.workloads.pods.items():
            if (pod["metadata"].get("labels") or {}).get(TASK_LABEL) != self.digest:
                continue
            rank = _rank(pod)
            known = newest.get(rank)
            if known is None or pod["metadata"].get("creationTimestamp", "") >= known[
                "metadata"
            ].get("creationTimestamp", ""):
                newest[rank] = pod
        return list(newest.values())


def _ready(channel: grpc.Channel) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=1.0)
    except grpc.FutureTimeoutError:
        return False
    return True


def _rank(pod: dict[str, Any]) -> str:
    return str((pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX, "?"))
