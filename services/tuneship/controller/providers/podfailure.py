"""Why a training pod or a Kubernetes call failed, as a stage failure the scheduler
acts on: disrupted (retried from the checkpoint), out of memory or invalid input (no
retry), any other exit (retried); an image that cannot start (no retry)."""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from tuneship.common.errors import EXIT_INVALID_INPUT
from tuneship.controller.providers.kube import WORKER_CONTAINER, condition
from tuneship.controller.providers.multinode import TRAINJOB_CONTAINER
from tuneship.controller.scheduler import StageFailure


class LogReader(Protocol):
    def log_tail(self, pod: str, container: str = WORKER_CONTAINER, lines: int = 20) -> str:
        """The last lines of a container's log ("" when it cannot be read)."""
        ...


IMAGE_ERRORS = {
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError",
}  # fmt: skip
"""Container waiting reasons that no retry fixes: the chart's values are wrong."""
MEMORY_HINT = (
    "lower train.per_device_train_batch_size (raise train.gradient_accumulation_steps to "
    "keep the effective batch), lower dataset.max_length, set train.gradient_checkpointing: "
    "true or train.method: qlora; or raise the trainer's memory limit in the chart values "
    "(trainer.resources.limits.memory)"
)


def pod_failure(workloads: LogReader, pod: dict[str, Any]) -> StageFailure:
    """Why a Job pod ended, from its status: disrupted (retried from the checkpoint),
    out of memory or invalid input (no retry), any other exit (retried)."""
    name = pod["metadata"]["name"]
    disruption = condition(pod, "DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        return StageFailure(
            "UNAVAILABLE",
            f"pod {name} was {_disruption(disruption)}; the retry resumes from the last "
            "checkpoint in the store", True,
        )  # fmt: skip
    terminated = _terminated(pod)
    if terminated.get("reason") == "OOMKilled":
        return StageFailure(
            "RESOURCE_EXHAUSTED",
            f"pod {name} ran out of memory (OOMKilled at its limit of "
            f"{_memory_limit(pod)}): {MEMORY_HINT}", False,
        )  # fmt: skip
    code = terminated.get("exitCode")
    tail = workloads.log_tail(name, main_container(pod))
    detail = f"\n{tail}" if tail else ""
    if code == EXIT_INVALID_INPUT:
        return StageFailure(
            "INVALID_ARGUMENT", f"pod {name} rejected its input (exit {code}){detail}", False
        )
    return StageFailure("UNAVAILABLE", f"pod {name} failed (exit {code}){detail}", True)


def api_failure(what: str, error: ApiException) -> StageFailure:
    """An API error as a stage failure: server-side and throttling errors are retried;
    anything else (403: the Role; 422: the chart's template) will not fix itself."""
    status = int(error.status or 0)
    retryable = status >= 500 or status in (0, 429)
    return StageFailure("UNAVAILABLE" if retryable else "FAILED_PRECONDITION",
                        f"{what}: {status} {error.reason}", retryable)  # fmt: skip


def main_container(pod: dict[str, Any]) -> str:
    """The tuneship container of a Job pod: ``worker`` (the chart's Job template) or
    ``node`` (a TrainJob's runtime)."""
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    return next((n for n in names if n in (WORKER_CONTAINER, TRAINJOB_CONTAINER)), WORKER_CONTAINER)


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == main_container(pod):
            state = container.get("state") or {}
            last = container.get("lastState") or {}
            return dict(state.get("terminated") or last.get("terminated") or {})
    return {}


def _memory_limit(pod: dict[str, Any]) -> str:
    for container in pod["spec"]["containers"]:
        if container.get("name") == main_container(pod):
            limits = (container.get("resources") or {}).get("limits") or {}
            return str(limits.get("memory", "no limit set"))
    return "unknown"


def _disruption(cond: dict[str, Any]) -> str:
    reason = cond.get("reason", "")
    words = {
        "PreemptionByScheduler": "preempted by a higher-priority pod",
        "PreemptionByKubeScheduler": "preempted by a higher-priority pod",
        "EvictionByEvictionAPI": "evicted (node drain)",
        "DeletionByTaintManager": "evicted (node taint)",
        "TerminationByKubelet": "terminated by the kubelet (node pressure or shutdown)",
    }
    return words.get(reason, f"disrupted ({reason})")
