"""The Deployment and ReplicaSet controllers.

A Deployment owns one ReplicaSet per pod template, named ``<deployment>-<hash>``
(the template's hash, also the pods' ``pod-template-hash`` label); the current one
gets ``spec.replicas``, older ones are scaled to zero at once (every rollout
replaces all pods together: no surge or unavailability budget). A ReplicaSet keeps
``replicas`` pods that have neither finished nor been deleted, named
``<replicaset>-<5 chars>``, so a deleted, evicted or failed pod is replaced.
Status fields (``replicas``, ``readyReplicas``, ``availableReplicas``,
``updatedReplicas``, ``observedGeneration``, ``Available``) follow the pods.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.podstatus import merge_conditions
from tuneship.testing.kube.store import DeleteOptions, ObjectStore

POD_TEMPLATE_HASH = "pod-template-hash"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any]) -> str:
    """A stable 10-character name-safe hash of a pod template."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest[:10])


def controller_of(obj: dict[str, Any]) -> str:
    """The uid of the object's controlling owner, or ``""``."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref["uid"])
    return ""


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controlling ownerReference to ``owner``."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip


class DeploymentController:
    """Deployments -> ReplicaSets (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def reconcile(self) -> None:
        """One pass over all Deployments."""
        deployments, _ = self._store.select(r.DEPLOYMENT)
        for deployment in deployments:
            if not deployment["metadata"].get("deletionTimestamp"):
                self._sync(deployment)

    def _sync(self, deployment: dict[str, Any]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, uid = meta["namespace"], meta["uid"]
        owned, _ = self._store.select(r.REPLICASET, namespace, lambda rs: controller_of(rs) == uid)
        name = f"{meta['name']}-{template_hash(spec['template'])}"
        current = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        if current is None:
            current = self._store.create(r.REPLICASET, namespace, _replicaset(deployment, name))
        others = [rs for rs in owned if rs["metadata"]["name"] != name]
        for rs in [current, *others]:
            replicas = int(spec.get("replicas", 1)) if rs is current else 0
            if rs["spec"].get("replicas") != replicas:
                self._scale(rs, replicas)
        owned, _ = self._store.select(r.REPLICASET, namespace, lambda rs: controller_of(rs) == uid)
        self._write_status(deployment, owned, name)

    def _scale(self, rs: dict[str, Any], replicas: int) -> None:
        def scale(obj: dict[str, Any]) -> None:
            obj["spec"]["replicas"] = replicas

        self._store.mutate(r.REPLICASET, rs["metadata"]["namespace"], rs["metadata"]["name"], scale)

    def _write_status(
        self, deployment: dict[str, Any], owned: list[dict[str, Any]], current: str
    ) -> None:
        def total(field: str) -> int:
            return sum(int(rs.get("status", {}).get(field, 0)) for rs in owned)

        wanted = int(deployment["spec"].get("replicas", 1))
        updated = next((rs for rs in owned if rs["metadata"]["name"] == current), None)
        available = total("availableReplicas")
        ok = available >= wanted
        conditions = {
            "Available": (ok, "MinimumReplicasUnavailable",
                          "Deployment does not have minimum availability."),
            "Progressing": (True, "", ""),
        }  # fmt: skip

        def write(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            status.update(
                observedGeneration=obj["metadata"]["generation"],
                replicas=total("replicas"),
                readyReplicas=total("readyReplicas"),
                availableReplicas=available,
                updatedReplicas=int((updated or {}).get("status", {}).get("replicas", 0)),
                unavailableReplicas=max(0, wanted - available),
            )
            status["conditions"] = merge_conditions(status.get("conditions") or [], conditions)

        meta = deployment["metadata"]
        self._store.mutate(r.DEPLOYMENT, meta["namespace"], meta["name"], write)


def _replicaset(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    spec = deployment["spec"]
    hash_ = name.rsplit("-", 1)[1]
    template = copy.deepcopy(spec["template"])
    template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = hash_
    selector = copy.deepcopy(spec["selector"])
    selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = hash_
    return {
        "metadata": {"name": name, "labels": template["metadata"]["labels"],
                     "ownerReferences": [owner_reference(deployment)]},
        "spec": {"replicas": 0, "selector": selector, "template": template},
    }  # fmt: skip


class ReplicaSetController:
    """ReplicaSets -> pods (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def reconcile(self) -> None:
        """One pass over all ReplicaSets."""
        sets, _ = self._store.select(r.REPLICASET)
        for rs in sets:
            if not rs["metadata"].get("deletionTimestamp"):
                self._sync(rs)

    def _sync(self, rs: dict[str, Any]) -> None:
        meta = rs["metadata"]
        pods, _ = self._store.select(
            r.POD, meta["namespace"], lambda p: controller_of(p) == meta["uid"]
        )
        active = [p for p in pods if _active(p)]
        wanted = int(rs["spec"].get("replicas", 1))
        for _ in range(wanted - len(active)):
            active.append(self._store.create(r.POD, meta["namespace"], _pod(rs)))
        # Scale down the least useful first: not ready before ready, newest before oldest.
        newest_first = sorted(
            active, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True
        )
        surplus = sorted(newest_first, key=_ready)
        for pod in surplus[: max(0, len(active) - wanted)]:
            self._store.delete(r.POD, meta["namespace"], pod["metadata"]["name"], DeleteOptions())
            active.remove(pod)
        ready = sum(1 for pod in active if _ready(pod))

        def write(obj: dict[str, Any]) -> None:
            obj["status"] = {"replicas": len(active), "fullyLabeledReplicas": len(active),
                             "readyReplicas": ready, "availableReplicas": ready,
                             "observedGeneration": obj["metadata"]["generation"]}  # fmt: skip

        self._store.mutate(r.REPLICASET, meta["namespace"], meta["name"], write)


def _pod(rs: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(rs["spec"]["template"])
    template_meta = template.get("metadata") or {}
    return {
        "metadata": {"generateName": f"{rs['metadata']['name']}-",
                     "labels": template_meta.get("labels") or {},
                     "annotations": template_meta.get("annotations") or {},
                     "ownerReferences": [owner_reference(rs)]},
        "spec": template["spec"],
    }  # fmt: skip


def _active(pod: dict[str, Any]) -> bool:
    phase = pod.get("status", {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
