"""A pod's ``status`` as the kubelet reports it, rendered from what its containers are
doing (``ContainerRun``), so that every update writes one consistent picture.

Conditions the kubelet does not own (``PodScheduled``, ``DisruptionTarget``...) are
kept as found; each condition keeps its ``lastTransitionTime`` until its status flips.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.testing.kube import clock
from tuneship.testing.kube.probes import ReadinessProbe
from tuneship.testing.kube.process import ContainerProcess

HOST_IP = "127.0.0.1"
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")


@dataclass
class ContainerRun:
    """What one container is doing: the kubelet's record, rendered into its status.

    ``role`` is ``init`` (runs to completion before the others), ``sidecar`` (an init
    container with ``restartPolicy: Always``: starts first, runs alongside) or ``main``.
    """

    spec: dict[str, Any]
    role: str
    log_path: Path
    state: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    ready: bool = False
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = None
    container_id: str = ""
    process: ContainerProcess | None = None
    probe: ReadinessProbe | None = None
    oom: bool = False
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])

    @property
    def succeeded(self) -> bool:
        """Exited with code 0."""
        return self.state == "terminated" and self.exit_code == 0

    def started(self, process: ContainerProcess) -> None:
        """The process is running."""
        self.process, self.state, self.reason, self.message = process, "running", "", ""
        self.started_at, self.ready = clock.timestamp(), self.probe is None
        digest = hashlib.sha256(f"{self.name}/{process.pid}/{self.started_at}".encode())
        self.container_id = f"containerd://{digest.hexdigest()}"
        if self.probe is not None:
            self.probe.restart()

    def exited(self, code: int) -> None:
        """The process ended with ``code`` (137 and reason OOMKilled after ``oom``)."""
        self.state, self.exit_code, self.ready = "terminated", code, False
        self.finished_at = clock.timestamp()
        self.reason = "OOMKilled" if self.oom else ("Completed" if code == 0 else "Error")
        self.oom = False

    def waiting(self, reason: str, message: str = "") -> None:
        """Not running, for ``reason`` (ContainerCreating, CrashLoopBackOff, ...)."""
        self.state, self.reason, self.message, self.ready = "waiting", reason, message, False

    def status(self) -> dict[str, Any]:
        """The ``ContainerStatus``."""
        image = str(self.spec.get("image", ""))
        status: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"fake.local/{image}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.state == "running",
            "state": self._state(),
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    def terminated_state(self) -> dict[str, Any]:
        """``state.terminated`` of the last run."""
        state: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason,
                                 "startedAt": self.started_at or None,
                                 "finishedAt": self.finished_at}  # fmt: skip
        if self.message:
            state["message"] = self.message
        if self.container_id:
            state["containerID"] = self.container_id
        return state

    def _state(self) -> dict[str, Any]:
        if self.state == "running":
            return {"running": {"startedAt": self.started_at}}
        if self.state == "terminated":
            return {"terminated": self.terminated_state()}
        waiting: dict[str, Any] = {"reason": self.reason}
        if self.message:
            waiting["message"] = self.message
        return {"waiting": waiting}


def pod_status(
    previous: dict[str, Any], runs: list[ContainerRun], phase: str, ip: str, start_time: str
) -> dict[str, Any]:
    """The whole ``status`` of a pod whose containers are ``runs`` (spec order)."""
    inits = [run for run in runs if run.role != "main"]
    mains = [run for run in runs if run.role == "main"]
    initialized = all(
        run.succeeded if run.role == "init" else run.state == "running" for run in inits
    )
    unready = [run.name for run in runs if run.role != "init" and not run.ready]
    ready_reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
    message = f"containers with unready status: [{' '.join(unready)}]"
    owned = {
        "PodReadyToStartContainers": (True, "", ""),
        "Initialized": (initialized or phase != "Pending", "ContainersNotInitialized",
                        "containers with incomplete status: "
                        f"[{' '.join(r.name for r in inits if not r.succeeded)}]"),
        "ContainersReady": (not unready and phase == "Running", ready_reason, message),
        "Ready": (not unready and phase == "Running", ready_reason, message),
    }  # fmt: skip
    status: dict[str, Any] = {
        **previous,
        "phase": phase,
        "conditions": merge_conditions(previous.get("conditions") or [], owned),
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start_time,
        "containerStatuses": [run.status() for run in mains],
    }
    if inits:
        status["initContainerStatuses"] = [run.status() for run in inits]
    return status


def merge_conditions(
    previous: list[dict[str, Any]], owned: dict[str, tuple[bool, str, str]]
) -> list[dict[str, Any]]:
    """``previous`` with the ``owned`` types set to (status, reason-if-false, message-if-false)."""
    by_type = {condition["type"]: condition for condition in previous}
    for kind, (true, reason, message) in owned.items():
        by_type[kind] = condition(kind, true, "" if true else reason, "" if true else message,
                                  by_type.get(kind))  # fmt: skip
    return list(by_type.values())


def condition(
    kind: str, true: bool, reason: str = "", message: str = "", old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pod or Job condition; ``lastTransitionTime`` is kept from ``old`` if the status
    did not change."""
    status = "True" if true else "False"
    same = old is not None and old.get("status") == status
    fresh: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": old["lastTransitionTime"] if same and old else clock.timestamp(),
    }
    if reason:
        fresh["reason"] = reason
    if message:
        fresh["message"] = message
    return fresh
