"""The fake node: ``Kubelet`` (its settings) and ``FakeNode`` (the pods it runs).

Every pod gets its own loopback address (``127.0.<n>.<m>``, never ``127.0.0.1``, which
is the node's ``hostIP``), so that every pod can bind the same container port, as pods
on their own network namespaces do. On Linux all of 127.0.0.0/8 reaches the loopback
interface with no setup. An address is handed out only if the pod's declared container
ports can be bound on it right now, and each fake starts at a random ``<n>``, so two
fakes on one machine (parallel test runs) do not collide.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.testing.kube import dns, env, errors
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.podworker import PodWorker
from tuneship.testing.kube.store import DeleteOptions, ObjectStore

NODE_NAME = "fake-node"


def _default_base_env() -> dict[str, str]:
    # The one read of os.environ in the fake: what processes inherit unless told otherwise.
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}


@dataclass(frozen=True)
class Kubelet:
    """How the fake kubelet runs containers as local processes."""

    images: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Image (exact, repository without tag, or ``"*"``) -> entrypoint argv, used when a
    container has no ``command`` (its ``args`` are appended)."""

    env: Mapping[str, str] = field(default_factory=dict)
    """Variables set in every container on top of what the pod spec gives it."""

    base_env: Mapping[str, str] = field(default_factory=_default_base_env)
    """All a process inherits besides its container's variables (default: this
    process's environment without ``KUBERNETES_*``)."""

    grace_cap_s: float = 5.0
    """Longest wait between SIGTERM and SIGKILL, whatever the pod's grace period says."""

    probe_period_s: float = 0.2
    """Cap on readiness probes' ``periodSeconds`` and ``initialDelaySeconds``."""

    restart_backoff_s: float = 1.0
    """Wait before restarting a container (``restartPolicy`` Always/OnFailure)."""

    workdir: Path | None = None
    """Where pod directories and logs go (default: a temporary directory removed on stop)."""


class AddressPool:
    """Loopback addresses for pods (see the module docstring)."""

    def __init__(self) -> None:
        self._third = random.randint(1, 254)
        self._fourth = 0
        self._lock = threading.Lock()

    def allocate(self, ports: Sequence[int]) -> str:
        """The next address where every port in ``ports`` is free. If none of the next
        254 is (something holds a port on 0.0.0.0), the first of them: servers that set
        SO_REUSEPORT, as gRPC does, can still bind it."""
        with self._lock:
            candidates = [self._next() for _ in range(254)]
            for address in candidates:
                if all(_bindable(address, port) for port in ports):
                    self._third, self._fourth = map(int, address.split(".")[2:])
                    return address
            return candidates[0]

    def _next(self) -> str:
        self._fourth += 1
        if self._fourth > 254:
            self._third, self._fourth = self._third % 254 + 1, 1
        return f"127.0.{self._third}.{self._fourth}"


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
        return True


class FakeNode:
    """Runs the pods bound to ``fake-node``; the control loop calls :meth:`reconcile`."""

    def __init__(self, settings: Kubelet, store: ObjectStore) -> None:
        self.settings = settings
        self._store = store
        self._owned_dir = settings.workdir is None
        self.root = settings.workdir or Path(tempfile.mkdtemp(prefix="fake-kubelet-"))
        self._addresses = AddressPool()
        self._workers: dict[str, PodWorker] = {}
        self._ips: dict[str, str] = {}
        self._resolve = dns.resolver(store, self._ips)
        self._lock = threading.Lock()
        self._stopped = False

    def reconcile(self) -> None:
        """Start a worker for each new pod bound here; stop the ones of deleted pods."""
        pods, _ = self._store.select(r.POD, None, lambda p: p["spec"].get("nodeName") == NODE_NAME)
        present = set()
        for pod in pods:
            meta = pod["metadata"]
            present.add(meta["uid"])
            with self._lock:
                worker = self._workers.get(meta["uid"])
                if worker is None and not self._stopped:
                    worker = self._admit(pod)
            if meta.get("deletionTimestamp") and worker is not None:
                worker.request_stop(float(meta.get("deletionGracePeriodSeconds") or 0))
        with self._lock:
            for uid, worker in self._workers.items():
                if uid not in present:
                    worker.request_stop(1.0)  # force-deleted: the API no longer has it

    def _admit(self, pod: dict[str, Any]) -> PodWorker | None:
        meta = pod["metadata"]
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return None
        if meta.get("deletionTimestamp"):  # deleted before it ever ran
            self._store.delete(r.POD, meta["namespace"], meta["name"], DeleteOptions(0))
            return None
        ports = [
            int(port["containerPort"])
            for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
            for port in container.get("ports") or []
            if port.get("protocol", "TCP") == "TCP"
        ]
        directory = self.root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        ip = self._addresses.allocate(ports)
        self._ips[meta["uid"]] = ip
        worker = PodWorker(
            pod, self.settings, self._store, ip, directory, self._lookup, self._resolve
        )
        self._workers[meta["uid"]] = worker
        worker.start()
        return worker

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        rtype = r.SECRET if kind == "Secret" else r.CONFIGMAP
        return env.object_data(self._store.find(rtype, namespace, name))

    def worker(self, pod: Mapping[str, Any]) -> PodWorker | None:
        """The worker running ``pod`` (matched by uid), if any."""
        with self._lock:
            return self._workers.get(pod["metadata"]["uid"])

    def container_log(
        self, pod: Mapping[str, Any], container: str
    ) -> tuple[Path, Callable[[], bool]]:
        """A started container's log file; 400 ``waiting to start`` otherwise."""
        worker = self.worker(pod)
        found = worker.log_file(container) if worker else None
        if found is None:
            reason = (worker.waiting_reason(container) if worker else "") or "ContainerCreating"
            name = pod["metadata"]["name"]
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        return found

    def pids(self) -> list[int]:
        """Every process id this node ever started."""
        with self._lock:
            return [pid for worker in self._workers.values() for pid in worker.pids]

    def stop(self) -> None:
        """Stop every pod's containers (grace capped by ``grace_cap_s``) and wait for them."""
        with self._lock:
            self._stopped = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop(min(1.0, self.settings.grace_cap_s))
        for worker in workers:
            worker.join(self.settings.grace_cap_s + 10)
        if self._owned_dir:
            shutil.rmtree(self.root, ignore_errors=True)
