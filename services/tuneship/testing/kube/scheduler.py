"""The scheduler: binds Pending pods to ``fake-node`` or says why not.

By default the only resource it accounts for is ``nvidia.com/gpu``: the node has
``knobs.gpus`` of them, and pods bound to it that have not finished hold theirs. A
test can replace the decision with ``knobs.schedulable(pod) -> message | None``.
An unschedulable pod gets ``PodScheduled=False`` (reason ``Unschedulable``) and a
``FailedScheduling`` Event; it is retried on every pass, so it is bound as soon as
``gpus`` grows, another pod finishes, or ``schedulable`` changes its answer.
Node selectors, affinity, taints and other resources are not considered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.node import NODE_NAME
from tuneship.testing.kube.podstatus import condition, merge_conditions
from tuneship.testing.kube.recorder import record_event
from tuneship.testing.kube.store import ObjectStore

GPU = "nvidia.com/gpu"
NO_NODES = "no nodes available to schedule pods"


@dataclass
class ClusterKnobs:
    """What tests turn: capacity, Kueue's hold, the scheduler's verdict."""

    gpus: int = 1
    kueue_hold: bool = False
    kueue_message: str = (
        "couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu "
        "in flavor default-flavor, request > maximum capacity (1 > 0)"
    )
    schedulable: Callable[[dict[str, Any]], str | None] | None = None
    node_ready: bool = False


def gpus_requested(pod: dict[str, Any]) -> int:
    """GPUs a pod needs: the largest of its containers' sum and any init container's."""
    spec = pod.get("spec", {})

    def amount(container: dict[str, Any]) -> int:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = resources.get("requests") or {}
        return int(limits.get(GPU, requests.get(GPU, 0)))

    running = sum(amount(c) for c in spec.get("containers") or [])
    return max([running, *(amount(c) for c in spec.get("initContainers") or [])])


class Scheduler:
    """Binds pods (see the module docstring)."""

    def __init__(self, store: ObjectStore, knobs: ClusterKnobs) -> None:
        self._store, self._knobs = store, knobs

    def reconcile(self) -> None:
        """One scheduling pass over every unbound Pending pod, oldest first."""
        pods, _ = self._store.select(r.POD)
        in_use = sum(gpus_requested(p) for p in pods if _holds_node(p))
        waiting = [p for p in pods if _wants_node(p)]
        waiting.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        for pod in waiting:
            why = self._why_not(pod, self._knobs.gpus - in_use)
            if why is None:
                in_use += gpus_requested(pod)
                self._bind(pod)
            else:
                self._refuse(pod, why)

    def _why_not(self, pod: dict[str, Any], free_gpus: int) -> str | None:
        if not self._knobs.node_ready:
            return NO_NODES
        if self._knobs.schedulable is not None:
            return self._knobs.schedulable(pod)
        if gpus_requested(pod) > free_gpus:
            return f"0/1 nodes are available: 1 Insufficient {GPU}."
        return None

    def _bind(self, pod: dict[str, Any]) -> None:
        def bind(obj: dict[str, Any]) -> None:
            obj["spec"]["nodeName"] = NODE_NAME
            status = obj.setdefault("status", {})
            owned = {"PodScheduled": (True, "", "")}
            status["conditions"] = merge_conditions(status.get("conditions") or [], owned)

        meta = pod["metadata"]
        self._store.mutate(r.POD, meta["namespace"], meta["name"], bind)

    def _refuse(self, pod: dict[str, Any], why: str) -> None:
        conditions = pod.get("status", {}).get("conditions") or []
        old = next((c for c in conditions if c["type"] == "PodScheduled"), None)
        if old is not None and old.get("message") == why:
            return  # already said so; the real scheduler also backs off

        def refuse(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            previous = status.get("conditions") or []
            kept = [c for c in previous if c["type"] != "PodScheduled"]
            status["conditions"] = [*kept, condition("PodScheduled", False, "Unschedulable", why,
                                                     old)]  # fmt: skip

        meta = pod["metadata"]
        if self._store.mutate(r.POD, meta["namespace"], meta["name"], refuse) is not None:
            record_event(self._store, pod, "Warning", "FailedScheduling", why, "default-scheduler")


def _wants_node(pod: dict[str, Any]) -> bool:
    spec, meta = pod.get("spec", {}), pod["metadata"]
    return (
        not spec.get("nodeName")
        and not meta.get("deletionTimestamp")
        and pod.get("status", {}).get("phase", "Pending") == "Pending"
        and spec.get("schedulerName", "default-scheduler") == "default-scheduler"
    )


def _holds_node(pod: dict[str, Any]) -> bool:
    phase = pod.get("status", {}).get("phase")
    return bool(pod.get("spec", {}).get("nodeName")) and phase not in ("Succeeded", "Failed")
