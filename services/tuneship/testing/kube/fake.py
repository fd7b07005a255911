"""``FakeKube``: the fake API server, its controllers and (optionally) a fake node.

One control loop thread runs the controllers in a fixed order every 50 ms and after
every change: Kueue, TrainJobs, JobSets, Jobs, Deployments, ReplicaSets, the scheduler,
the kubelet, the EndpointSlices and the garbage collector. The test knobs (``gpus``, ``kueue_hold``,
``schedulable``) take effect on the next pass.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.apiserver import ApiServer
from tuneship.testing.kube.endpointslices import EndpointSliceController
from tuneship.testing.kube.errors import ApiError, bad_request
from tuneship.testing.kube.gc import GarbageCollector
from tuneship.testing.kube.jobs import JobController
from tuneship.testing.kube.jobsets import JobSetController
from tuneship.testing.kube.kueue import Kueue
from tuneship.testing.kube.node import FakeNode, Kubelet
from tuneship.testing.kube.podstatus import condition
from tuneship.testing.kube.rbac import ApiRequest
from tuneship.testing.kube.scheduler import ClusterKnobs, Scheduler
from tuneship.testing.kube.selectors import labels_match, parse_label_selector
from tuneship.testing.kube.store import DeleteOptions, ObjectStore
from tuneship.testing.kube.tls import self_signed, server_context
from tuneship.testing.kube.trainjobs import TrainJobController
from tuneship.testing.kube.workloads import DeploymentController, ReplicaSetController

log = logging.getLogger(__name__)
T = TypeVar("T")


class Reconciler(Protocol):
    """A controller: one pass brings what it owns closer to what is asked."""

    def reconcile(self) -> None:
        """One pass (raises ``ApiError`` when it raced with another writer: retried)."""
        ...


EVICTION_MESSAGES = {
    "EvictionByEvictionAPI": "Eviction API: evicting",
    "PreemptionByScheduler": "default-scheduler: preempting to accommodate a higher priority pod",
    "DeletionByTaintManager": "Taint manager: deleting due to NoExecute taint",
    "TerminationByKubelet": "The node was low on resource: memory.",
}


class FakeKube:
    """A Kubernetes API server on ``127.0.0.1`` with controllers and a fake kubelet.

    Use as a context manager (or ``start()``/``stop()``). ``role`` (a Role manifest)
    restricts every token except ``admin``; ``history`` bounds the change history that
    watches resume from; ``kubelet`` runs pods as local processes. ``tls`` serves HTTPS
    with a throwaway CA (``ca_file``): client-go (Helm) sends tokens only over TLS, so
    over plain HTTP its requests are anonymous (allowed only without a ``role``).
    """

    def __init__(
        self,
        namespace: str = "tuneship",
        *,
        role: dict[str, Any] | None = None,
        kubelet: Kubelet | None = None,
        history: int = 1000,
        gpus: int = 1,
        kueue_hold: bool = False,
        git_version: str = r.DEFAULT_VERSION,
        tick_s: float = 0.05,
        tls: bool = False,
    ) -> None:
        self.namespace = namespace
        self.role = role
        self.git_version = git_version
        self.requests: list[ApiRequest] = []
        self.controller_errors: list[str] = []
        self.inert: list[dict[str, Any]] = []
        self.store = ObjectStore(history)
        self.knobs = ClusterKnobs(gpus=gpus, kueue_hold=kueue_hold)
        self._tick_s = tick_s
        self._node: FakeNode | None = None
        self._kubelet = kubelet
        self._kueue = Kueue(self.store, self.knobs)
        self._controllers: list[Reconciler] = [
            self._kueue, TrainJobController(self.store), JobSetController(self.store),
            JobController(self.store), DeploymentController(self.store),
            ReplicaSetController(self.store), Scheduler(self.store, self.knobs),
        ]  # fmt: skip
        self._late_controllers: list[Reconciler] = [
            EndpointSliceController(self.store), GarbageCollector(self.store),
        ]  # fmt: skip
        self.ca_file: Path | None = None
        self._tls_dir: Path | None = None
        context = None
        if tls:
            self._tls_dir = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
            self.ca_file, key = self_signed(self._tls_dir)
            context = server_context(self.ca_file, key)
        self._server = ApiServer(self, context)
        self.url = self._server.url
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Serve HTTP and run the controllers (and the kubelet, if given)."""
        for name in dict.fromkeys(["default", self.namespace]):
            self.store.create(r.NAMESPACE, "", {"metadata": {"name": name}})
        if self._kubelet is not None:
            self.start_kubelet(self._kubelet)
        for target, name in ((self._server.serve_forever, "fake-kube-http"),
                             (self._control_loop, "fake-kube-controllers")):  # fmt: skip
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop everything; every process the kubelet started is gone when this returns."""
        self._stopping.set()
        for thread in self._threads[1:]:
            thread.join(10)
        if self._node is not None:
            self._node.stop()
        self.store.close()
        self._server.stop()
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)

    def start_kubelet(self, kubelet: Kubelet | None = None, **settings: Any) -> None:
        """Add the node: pods get scheduled and run (``Kubelet(**settings)`` if none given)."""
        self._node = FakeNode(kubelet or Kubelet(**settings), self.store)
        self.knobs.node_ready = True
        self.store.poke()

    def _control_loop(self) -> None:
        while not self._stopping.is_set():
            node: list[Reconciler] = [self._node] if self._node is not None else []
            for controller in [*self._controllers, *node, *self._late_controllers]:
                if self._stopping.is_set():
                    return
                try:
                    controller.reconcile()
                except ApiError as error:
                    log.debug("fake kube: %s raced with a change: %s", controller, error)
                except Exception as error:  # keep the cluster alive; tests can read the errors
                    log.exception("fake kube: %s failed", type(controller).__name__)
                    self.controller_errors.append(f"{type(controller).__name__}: {error!r}")
            self.store.wait(self.store.resource_version, self._tick_s)

    # --- clients -----------------------------------------------------------------

    def api_client(self, token: str = "controller") -> Any:
        """A ``kubernetes.client.ApiClient`` for this server, authenticating with ``token``."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        if self.ca_file is not None:
            configuration.ssl_ca_cert = str(self.ca_file)
        return client.ApiClient(configuration)

    def write_kubeconfig(self, path: Path, token: str = "controller") -> Path:
        """A kubeconfig for ``kubernetes.config.load_kube_config`` (context ``fake``)."""
        cluster: dict[str, str] = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca_file.read_bytes()
            ).decode()
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": token, "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": token,
                                                     "namespace": self.namespace}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config))
        return path

    def requested_rules(self, token: str) -> set[tuple[str, str, str]]:
        """``(api_group, resource[/subresource], verb)`` of every resource request by ``token``."""
        return {
            (req.api_group, req.rule_resource, req.verb)
            for req in list(self.requests)
            if req.token == token and req.resource
        }

    # --- knobs -------------------------------------------------------------------

    @property
    def gpus(self) -> int:
        """GPUs the node has (default 1); pods asking for more stay Pending."""
        return self.knobs.gpus

    @gpus.setter
    def gpus(self, value: int) -> None:
        self.knobs.gpus = value
        self.store.poke()

    @property
    def kueue_hold(self) -> bool:
        """While True, queued Jobs stay suspended (Kueue has no quota for them)."""
        return self.knobs.kueue_hold

    @kueue_hold.setter
    def kueue_hold(self, value: bool) -> None:
        self.knobs.kueue_hold = value
        self.store.poke()

    @property
    def schedulable(self) -> Callable[[dict[str, Any]], str | None] | None:
        """``pod -> None (schedulable) | scheduler message``; None: the GPU rule."""
        return self.knobs.schedulable

    @schedulable.setter
    def schedulable(self, value: Callable[[dict[str, Any]], str | None] | None) -> None:
        self.knobs.schedulable = value
        self.store.poke()

    # --- failures and Kueue --------------------------------------------------------

    def admit(self, job_name: str, namespace: str | None = None, kind: str = "Job") -> None:
        """Kueue admits the queued Job (JobSet, TrainJob: ``kind``) now, hold or not."""
        self._kueue.admit(self.store.get(r.by_name(kind), namespace or self.namespace, job_name))
        self.store.poke()

    def evict(
        self, name: str, reason: str = "PreemptionByScheduler", *, namespace: str | None = None
    ) -> None:
        """``DisruptionTarget=True`` (``reason``) on the pod, then its graceful deletion."""
        namespace = namespace or self.namespace
        self.store.get(r.POD, namespace, name)
        message = EVICTION_MESSAGES.get(reason, f"fake: {reason}")

        def disrupt(pod: dict[str, Any]) -> None:
            status = pod.setdefault("status", {})
            kept = [c for c in status.get("conditions") or [] if c["type"] != "DisruptionTarget"]
            status["conditions"] = [*kept, condition("DisruptionTarget", True, reason, message)]

        self.store.mutate(r.POD, namespace, name, disrupt)
        self.store.delete(r.POD, namespace, name, DeleteOptions())

    def oom_kill(
        self, name: str, container: str | None = None, *, namespace: str | None = None
    ) -> None:
        """SIGKILL a running container; it terminates with ``OOMKilled`` and exit code 137."""
        pod = self.store.get(r.POD, namespace or self.namespace, name)
        worker = self._node.worker(pod) if self._node else None
        if worker is None or not worker.oom_kill(container):
            raise RuntimeError(f"pod {name} has no running container to OOM-kill")

    def crash(
        self, name: str, container: str | None = None, *, namespace: str | None = None
    ) -> None:
        """SIGKILL a running container, as a crash: it terminates with exit code 137."""
        pod = self.store.get(r.POD, namespace or self.namespace, name)
        worker = self._node.worker(pod) if self._node else None
        if worker is None or not worker.oom_kill(container, oom=False):
            raise RuntimeError(f"pod {name} has no running container to kill")

    def delete_pod(
        self, name: str, grace_seconds: int | None = None, *, namespace: str | None = None
    ) -> None:
        """Delete a pod as a client would (graceful unless ``grace_seconds=0``)."""
        options = DeleteOptions(grace_seconds=grace_seconds)
        self.store.delete(r.POD, namespace or self.namespace, name, options)

    def compact(self) -> None:
        """Drop the change history: watches from an older resourceVersion get 410."""
        self.store.compact()

    # --- the ApiBackend side -------------------------------------------------------

    def container_log(self, pod: dict[str, Any], container: str) -> tuple[Path, Callable[[], bool]]:
        """Used by ``pods/log``."""
        if self._node is None:
            raise bad_request(f'container "{container}" in pod "{pod["metadata"]["name"]}" '
                              "is waiting to start: ContainerCreating")  # fmt: skip
        return self._node.container_log(pod, container)

    # --- reading state in tests ----------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """An object by kind (``Job``/``jobs``/``job``) and name, or None."""
        rtype = r.by_name(kind)
        return self.store.find(rtype, namespace or self.namespace, name)

    def objects(
        self, kind: str, label_selector: str = "", namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind in the namespace (all namespaces: ``namespace="*"``)."""
        requirements = parse_label_selector(label_selector)
        where = None if namespace == "*" else namespace or self.namespace
        items, _ = self.store.select(
            r.by_name(kind), where, lambda o: labels_match(requirements, o)
        )
        return items

    def pods(self, label_selector: str = "") -> list[dict[str, Any]]:
        """The namespace's pods matching a label selector."""
        return self.objects("pods", label_selector)

    def jobs(self) -> list[dict[str, Any]]:
        """The namespace's Jobs."""
        return self.objects("jobs")

    def events(
        self, involved_name: str | None = None, reason: str | None = None
    ) -> list[dict[str, Any]]:
        """The namespace's Events, optionally about one object and/or with one reason."""
        return [
            event for event in self.objects("events")
            if involved_name in (None, event["involvedObject"]["name"])
            and reason in (None, event["reason"])
        ]  # fmt: skip

    def pod_log(self, name: str, container: str | None = None) -> str:
        """A container's log so far."""
        pod = self.store.get(r.POD, self.namespace, name)
        chosen = container or pod["spec"]["containers"][0]["name"]
        path, _ = self.container_log(pod, chosen)
        return path.read_text(errors="replace")

    def pids(self) -> list[int]:
        """Every process the kubelet started (for checking that none outlives ``stop()``)."""
        return self._node.pids() if self._node else []

    def wait_for(self, predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "") -> T:
        """Poll ``predicate`` until it returns something truthy, and return that;
        raises ``TimeoutError`` describing the pods and Jobs otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}\n"
                                   f"{self.describe()}")  # fmt: skip
            time.sleep(0.05)

    def describe(self) -> str:
        """A short picture of the namespace's pods and Jobs (for failure messages)."""
        lines = []
        for job in self.jobs():
            lines.append(f"job {job['metadata']['name']}: {job.get('status')}")
        for pod in self.pods():
            status = pod.get("status", {})
            lines.append(
                f"pod {pod['metadata']['name']}: {status.get('phase')} "
                f"{[(c['type'], c['status'], c.get('reason')) for c in status.get('conditions') or []]} "  # noqa: E501
                f"{[s.get('state') for s in status.get('containerStatuses') or []]}"
            )
        if self.controller_errors:
            lines.append(f"controller errors: {self.controller_errors}")
        return "\n".join(lines)

    def apply(self, manifests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create (or replace) each manifest as ``admin``; returns the stored objects.

        Kinds the fake does not serve (ServiceAccount, Role, NetworkPolicy, ...) are kept,
        inert, in ``self.inert`` and not returned: rendered charts apply whole.
        """
        stored = []
        for manifest in manifests:
            rtype = r.by_kind(str(manifest.get("apiVersion")), str(manifest.get("kind")))
            if rtype is None:
                self.inert.append(manifest)
                continue
            namespace = manifest.get("metadata", {}).get("namespace") or self.namespace
            try:
                stored.append(self.store.create(rtype, namespace, manifest))
            except ApiError as error:
                if error.reason != "AlreadyExists":
                    raise
                name = manifest["metadata"]["name"]
                body = {**manifest, "metadata": {**manifest["metadata"]}}
                body["metadata"].pop("resourceVersion", None)
                stored.append(self.store.replace(rtype, namespace, name, body))
        return stored
