"""The ``k8s-pool`` provider: a Deployment of stage workers behind a headless Service.

The controller watches the Service's EndpointSlices (never polls): the Ready endpoints
are the workers and, times each pod's capacity, the stage's concurrency. An attempt goes
to the least busy Ready endpoint. A pod that goes away mid-stage (its endpoint leaves
the slices, or its stream breaks) ends the attempt with ``UNAVAILABLE``: the retry runs
elsewhere. After a controller restart, ``reattach`` asks each endpoint for the task
(``attach_only``) before starting it anew, so no task runs twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from kubernetes import client

from tuneship.common.events import Event, Log
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.controller.providers.informer import Informer
from tuneship.controller.providers.kube import GRPC_PORT_NAME, SERVICE_NAME_LABEL, KubeSettings
from tuneship.controller.scheduler import Numbered, StageFailure
from tuneship.controller.wire_clients import Channels, GrpcStageCall, cancel_task, start_stage

log = logging.getLogger("tuneship.controller.k8s")


def ready_endpoints(slices: list[dict[str, Any]], port_name: str = GRPC_PORT_NAME) -> list[str]:
    """``ip:port`` of every Ready endpoint in ``slices`` (sorted, no duplicates)."""
    found: set[str] = set()
    for piece in slices:
        ports = [p for p in piece.get("ports") or [] if p.get("name") == port_name]
        if not ports or ports[0].get("port") is None:
            continue
        for endpoint in piece.get("endpoints") or []:
            # Per the API, an unset "ready" means ready.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                found.add(f"{address}:{ports[0]['port']}")
    return sorted(found)


class Slices(Protocol):
    """The EndpointSlices of one Service, kept current (an ``Informer``)."""

    def items(self) -> list[dict[str, Any]]: ...

    def wait(self, timeout_s: float) -> None: ...

    def stop(self) -> None: ...


def pool_provider(
    stage: str, settings: KubeSettings, api: client.ApiClient, channels: Channels
) -> PoolProvider:
    """The pool of ``stage``: its Service's EndpointSlices watched through ``api``."""
    service = settings.pools[stage]
    discovery = client.DiscoveryV1Api(api)
    slices = Informer(
        discovery.list_namespaced_endpoint_slice, settings.namespace,
        f"{SERVICE_NAME_LABEL}={service}", what=f"endpointslices of {service}",
    ).start()  # fmt: skip
    return PoolProvider(stage, service, settings.pool_capacity.get(stage, 1), slices, channels)


class PoolProvider:
    """Attempts of ``stage`` on the Ready pods behind ``service``."""

    kind = "k8s-pool"

    def __init__(
        self, stage: str, service: str, per_pod: int, slices: Slices, channels: Channels
    ) -> None:
        self.stage, self.service, self.per_pod = stage, service, per_pod
        self.slices, self.channels = slices, channels
        self._busy: dict[str, int] = {}
        self._placed: dict[str, str] = {}
        self._lock = threading.Lock()

    def endpoints(self) -> list[str]:
        return ready_endpoints(self.slices.items())

    def run(self, job: StageJob, reattach: bool) -> PoolStageCall:
        return PoolStageCall(self, job, reattach)

    def cancel(self, task_id: str) -> bool:
        with self._lock:
            address = self._placed.get(task_id)
        return address is not None and cancel_task(self.channels.get(address), self.stage, task_id)

    def capacity(self) -> int | None:
        return len(self.endpoints()) * self.per_pod

    def address(self) -> str | None:
        ready = self.endpoints()
        if not ready:
            return None
        with self._lock:
            return min(ready, key=lambda a: self._busy.get(a, 0))

    def close(self) -> None:
        self.slices.stop()

    def claim(self, task_id: str) -> str | None:
        """Place ``task_id`` on the least busy Ready endpoint (None if there is none);
        picking and counting happen under one lock, so concurrent attempts spread."""
        ready = self.endpoints()
        with self._lock:
            if not ready:
                return None
            address = min(ready, key=lambda a: self._busy.get(a, 0))
            self._place(task_id, address)
            return address

    def place(self, task_id: str, address: str) -> None:
        with self._lock:
            self._place(task_id, address)

    def _place(self, task_id: str, address: str) -> None:
        self._placed[task_id] = address
        self._busy[address] = self._busy.get(address, 0) + 1

    def release(self, task_id: str) -> None:
        with self._lock:
            address = self._placed.pop(task_id, None)
            if address is not None:
                self._busy[address] = max(0, self._busy.get(address, 0) - 1)


class PoolStageCall:
    """One attempt on one pool pod, abandoned if that pod leaves the pool."""

    def __init__(self, provider: PoolProvider, job: StageJob, reattach: bool) -> None:
        self.provider, self.job, self.reattach = provider, job, reattach
        self._inner: GrpcStageCall | None = None
        self._gone = threading.Event()
        self._done = threading.Event()

    def cancel(self) -> None:
        self._done.set()
        if self._inner is not None:
            self._inner.cancel()

    def __iter__(self) -> Iterator[Event | Numbered | StageOutcome | None]:
        provider = self.provider
        address, first = self._reattached() if self.reattach else (None, [])
        if address is not None:
            provider.place(self.job.task_id, address)
        else:
            address = provider.claim(self.job.task_id)
            if address is None:
                raise StageFailure(
                    "UNAVAILABLE", f"no Ready pod behind service {provider.service}", True,
                    reached=False,
                )  # fmt: skip
            try:
                self._inner = start_stage(provider.channels.get(address), provider.stage, self.job)
            except BaseException:
                provider.release(self.job.task_id)
                raise
        threading.Thread(target=self._watch, args=(address,), daemon=True).start()
        try:
            yield Log(provider.stage, f"running on {address} ({provider.service})")
            yield from first
            assert self._inner is not None
            yield from self._inner
        except StageFailure as failure:
            if self._gone.is_set():
                raise StageFailure(
                    "UNAVAILABLE", f"pod {address} left the {provider.service} pool mid-stage",
                    True,
                ) from failure  # fmt: skip
            raise
        finally:
            self._done.set()
            provider.release(self.job.task_id)

    def _reattached(self) -> tuple[str | None, list[Any]]:
        """The endpoint that already runs this task, and the first item it sent."""
        probe = StageJob(**{**vars(self.job), "attach_only": True})
        for address in self.provider.endpoints():
            call = start_stage(self.provider.channels.get(address), self.provider.stage, probe)
            try:
                first = next(iter(call))
            except StageFailure as failure:
                if failure.code != "NOT_FOUND":
                    log.info("re-attach probe of %s failed: %s", address, failure)
                continue
            except StopIteration:
                continue
            self._inner = call
            return address, [first]
        return None, []

    def _watch(self, address: str) -> None:
        """Cancel the stream when ``address`` leaves the Ready endpoints."""
        while not self._done.is_set():
            if address not in self.provider.endpoints():
                self._gone.set()
                if self._inner is not None:
                    self._inner.cancel()
                return
            self.provider.slices.wait(1.0)
