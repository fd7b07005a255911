"""The garbage collector and the pod GC.

- Dependents whose every owner (by uid) is gone are deleted (``Background``).
- An owner deleted with ``propagationPolicy: Foreground`` carries the
  ``foregroundDeletion`` finalizer: its dependents are deleted, and the finalizer is
  removed (so the owner goes) once none is left.
- ``Orphan`` is done by the store at DELETE time (ownerReferences removed).
- Pod GC: a pod being deleted that never reached a node is marked ``Failed`` (with
  ``DisruptionTarget``, reason ``DeletionByPodGC``), so that controllers holding a
  finalizer on it can count it and let it go.
"""

from __future__ import annotations

from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.podstatus import condition
from tuneship.testing.kube.store import FOREGROUND, DeleteOptions, ObjectStore


class GarbageCollector:
    """Owner-reference garbage collection (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def reconcile(self) -> None:
        """One pass over every object."""
        uids = self._store.all_uids()
        for rtype in r.RESOURCES:
            objects, _ = self._store.select(rtype)
            for obj in objects:
                meta = obj["metadata"]
                refs = meta.get("ownerReferences") or []
                orphaned = refs and all(ref.get("uid") not in uids for ref in refs)
                if orphaned and not meta.get("deletionTimestamp"):
                    self._delete(rtype, obj)
                if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
                    self._foreground(rtype, obj)
        self._unbound_pods()

    def _foreground(self, rtype: r.ResourceType, owner: dict[str, Any]) -> None:
        dependents = self._store.owned_by(owner["metadata"]["uid"])
        for dep_type, dependent in dependents:
            if not dependent["metadata"].get("deletionTimestamp"):
                self._delete(dep_type, dependent)
        if dependents:
            return

        def release(obj: dict[str, Any]) -> None:
            obj["metadata"]["finalizers"] = [
                f for f in obj["metadata"].get("finalizers") or [] if f != FOREGROUND
            ]

        meta = owner["metadata"]
        self._store.mutate(rtype, meta.get("namespace", ""), meta["name"], release)

    def _delete(self, rtype: r.ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        options = DeleteOptions(propagation="Background", uid=meta["uid"])
        self._store.delete(rtype, meta.get("namespace", ""), meta["name"], options)

    def _unbound_pods(self) -> None:
        pods, _ = self._store.select(
            r.POD,
            None,
            lambda p: (
                bool(p["metadata"].get("deletionTimestamp"))
                and not p["spec"].get("nodeName")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            ),
        )
        for pod in pods:

            def fail(obj: dict[str, Any]) -> None:
                status = obj.setdefault("status", {})
                status["phase"] = "Failed"
                why = "PodGC: node no longer exists"
                gone = condition("DisruptionTarget", True, "DeletionByPodGC", why)
                status.setdefault("conditions", []).append(gone)

            meta = pod["metadata"]
            self._store.mutate(r.POD, meta["namespace"], meta["name"], fail)
