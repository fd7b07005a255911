"""The EndpointSlice controller: one ``discovery.k8s.io/v1`` EndpointSlice per Service
with a selector, named ``<service>-<5 chars>`` and labelled
``kubernetes.io/service-name: <service>`` and
``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``.

Endpoints are the selected pods that have an IP and have not finished, sorted by pod
name, each with ``addresses: [podIP]``, ``conditions`` (``ready``: Ready and not
terminating, or always with ``publishNotReadyAddresses``; ``serving``: Ready;
``terminating``: being deleted), ``nodeName`` and a ``targetRef`` to the pod.
``ports`` are the Service's ports with ``targetPort`` resolved against the pods'
container port names (the first pod that declares the name decides; real clusters
split pods that disagree into several slices). As on a real server, a slice with no
endpoints has ``"endpoints": null``: clients must accept that.
"""

from __future__ import annotations

from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.node import NODE_NAME
from tuneship.testing.kube.selectors import selector_object_matches
from tuneship.testing.kube.store import ObjectStore
from tuneship.testing.kube.workloads import owner_reference

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"


class EndpointSliceController:
    """Keeps each Service's slice equal to its pods (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def reconcile(self) -> None:
        """One pass over all Services."""
        services, _ = self._store.select(r.SERVICE)
        for service in services:
            if service["spec"].get("selector") and not service["metadata"].get("deletionTimestamp"):
                self._sync(service)

    def _sync(self, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        selector = {"matchLabels": service["spec"]["selector"]}
        pods, _ = self._store.select(
            r.POD, meta["namespace"], lambda p: selector_object_matches(selector, _labels(p))
        )
        pods = [p for p in pods if p.get("status", {}).get("podIP") and not _finished(p)]
        publish_all = bool(service["spec"].get("publishNotReadyAddresses"))
        endpoints = [_endpoint(pod, publish_all) for pod in pods]
        ports = _ports(service, pods)
        slices, _ = self._store.select(
            r.ENDPOINTSLICE, meta["namespace"],
            lambda s: (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == meta["name"]
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY,
        )  # fmt: skip
        if not slices:
            self._store.create(r.ENDPOINTSLICE, meta["namespace"],
                               _new_slice(service, endpoints or None, ports))  # fmt: skip
            return

        def update(obj: dict[str, Any]) -> None:
            obj["endpoints"], obj["ports"] = endpoints or None, ports

        name = slices[0]["metadata"]["name"]
        self._store.mutate(r.ENDPOINTSLICE, meta["namespace"], name, update)


def _new_slice(
    service: dict[str, Any], endpoints: list[dict[str, Any]] | None, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    meta = service["metadata"]
    labels = {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: meta["name"],
              MANAGED_BY_LABEL: MANAGED_BY}  # fmt: skip
    return {
        "metadata": {"generateName": f"{meta['name']}-", "labels": labels,
                     "ownerReferences": [owner_reference(service)]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }  # fmt: skip


def _endpoint(pod: dict[str, Any], publish_all: bool) -> dict[str, Any]:
    meta = pod["metadata"]
    conditions = pod.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    terminating = bool(meta.get("deletionTimestamp"))
    return {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": publish_all or (ready and not terminating), "serving": ready,
                       "terminating": terminating},
        "nodeName": pod["spec"].get("nodeName", NODE_NAME),
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                      "uid": meta["uid"]},
    }  # fmt: skip


def _ports(service: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resolved = []
    for port in service["spec"].get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        number = int(target) if str(target).isdigit() else _named_port(pods, str(target))
        if number is None:
            continue
        entry = {
            "name": port.get("name", ""),
            "port": number,
            "protocol": port.get("protocol", "TCP"),
        }
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        resolved.append(entry)
    return resolved


def _named_port(pods: list[dict[str, Any]], name: str) -> int | None:
    for pod in pods:
        for container in pod["spec"].get("containers") or []:
            for declared in container.get("ports") or []:
                if declared.get("name") == name:
                    return int(declared["containerPort"])
    return None


def _labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def _finished(pod: dict[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
