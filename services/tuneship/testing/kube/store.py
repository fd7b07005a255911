"""``ObjectStore``: the fake's etcd plus the API server's generic registry.

Every write goes through here, under one lock: metadata (``uid``,
``creationTimestamp``, ``generation``, ``generateName``), one global
``resourceVersion`` counter, optimistic concurrency (409 ``Conflict``), graceful
deletion (``deletionTimestamp`` while finalizers or a running pod's kubelet hold the
object), propagation policies, and a bounded history of changes that watches read
from (a watch older than the history gets 410 ``Expired``). Writes that change nothing
keep the resourceVersion and produce no event, as on a real server.
"""

from __future__ import annotations

import copy
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneship.testing.kube import admission, clock
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.errors import (
    already_exists,
    bad_request,
    conflict,
    not_found,
)
from tuneship.testing.kube.history import Change, History
from tuneship.testing.kube.patch import apply_patch
from tuneship.testing.kube.resources import ResourceType

Object = dict[str, Any]
# generateName suffixes use the API server's alphabet (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "name", "namespace")  # fmt: skip
_OMITTED_WHEN_EMPTY = ("labels", "annotations", "finalizers", "ownerReferences")
FOREGROUND = "foregroundDeletion"


@dataclass(frozen=True)
class DeleteOptions:
    """A DELETE's ``DeleteOptions`` (query parameters or body)."""

    grace_seconds: int | None = None
    propagation: str | None = None
    uid: str | None = None
    resource_version: str | None = None


def random_suffix(length: int = 5) -> str:
    """Random characters from the API server's generateName alphabet."""
    return "".join(random.choices(_SUFFIX_ALPHABET, k=length))


class ObjectStore:
    """All objects of all served resources, their history and the waiters on both."""

    def __init__(self, history: int = 1000) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self._rv = 1
        self._objects: dict[ResourceType, dict[tuple[str, str], Object]] = {
            rtype: {} for rtype in r.RESOURCES
        }
        self._history = History(history)

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out."""
        with self.lock:
            return self._rv

    # --- reads -------------------------------------------------------------------

    def find(self, rtype: ResourceType, namespace: str, name: str) -> Object | None:
        """A copy of the object, or None."""
        with self.lock:
            found = self._objects[rtype].get((self._ns(rtype, namespace), name))
            return copy.deepcopy(found) if found is not None else None

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Object:
        """A copy of the object; raises 404 ``ApiError``."""
        found = self.find(rtype, namespace, name)
        if found is None:
            raise not_found(rtype, name)
        return found

    def select(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        where: Callable[[Object], bool] | None = None,
    ) -> tuple[list[Object], int]:
        """Copies of the objects in ``namespace`` (all if None) that pass ``where``,
        sorted by namespace and name, and the resourceVersion they were read at."""
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects[rtype].items())
                if (namespace is None or ns == namespace) and (where is None or where(obj))
            ]
            return items, self._rv

    def owned_by(self, uid: str) -> list[tuple[ResourceType, Object]]:
        """Every object with an ownerReference to ``uid`` (copies)."""
        with self.lock:
            return [
                (rtype, copy.deepcopy(obj))
                for rtype, objects in self._objects.items()
                for obj in objects.values()
                if any(ref.get("uid") == uid for ref in _meta(obj).get("ownerReferences") or [])
            ]

    def all_uids(self) -> set[str]:
        """The uid of every stored object."""
        with self.lock:
            return {_meta(o)["uid"] for objects in self._objects.values() for o in objects.values()}

    # --- writes ------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str, body: Object) -> Object:
        """Store a new object; 409 ``AlreadyExists``, 404 for a missing namespace, 422."""
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta = obj.setdefault("metadata", {})
        namespace = self._ns(rtype, namespace)
        if rtype.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")  # fmt: skip
        with self.lock:
            if rtype.namespaced and ("", namespace) not in self._objects[r.NAMESPACE]:
                raise not_found(r.NAMESPACE, namespace)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(rtype, namespace, meta["generateName"])
            name = str(meta.get("name", ""))
            if (namespace, name) in self._objects[rtype]:
                raise already_exists(rtype, name)
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=clock.timestamp(), generation=1)
            if rtype.namespaced:
                meta["namespace"] = namespace
            admission.default(rtype, obj)
            admission.validate(rtype, obj)
            return self._commit(rtype, namespace, name, obj, None)

    def replace(
        self, rtype: ResourceType, namespace: str, name: str, body: Object, subresource: str = ""
    ) -> Object:
        """PUT: a whole new object (or its status); 409 ``Conflict`` on a stale RV."""
        with self.lock:
            current = self.get(rtype, namespace, name)
            given = copy.deepcopy(body)
            meta = given.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise bad_request(f"the name of the object ({meta['name']}) does not match the "
                                  f"name on the URL ({name})")  # fmt: skip
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and str(wanted_rv) != _meta(current)["resourceVersion"]:
                raise conflict(rtype, name)
            return self._write(rtype, current, given, subresource)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        body: Any,
        subresource: str = "",
    ) -> Object:
        """PATCH (merge, strategic merge or JSON patch); a ``resourceVersion`` the patch
        sets is a precondition, as on a real server."""
        with self.lock:
            current = self.get(rtype, namespace, name)
            patched = apply_patch(current, content_type, body)
            if _meta(patched).get("resourceVersion") != _meta(current)["resourceVersion"]:
                raise conflict(rtype, name)
            return self._write(rtype, current, patched, subresource)

    def mutate(
        self, rtype: ResourceType, namespace: str, name: str, change: Callable[[Object], Any]
    ) -> Object | None:
        """For the fake's own controllers: apply ``change`` to a copy of the latest object
        and store it (no RV check, status included). None if the object is gone."""
        with self.lock:
            current = self.find(rtype, namespace, name)
            if current is None:
                return None
            updated = copy.deepcopy(current)
            change(updated)
            return self._write(rtype, current, updated, "*")

    def _write(
        self, rtype: ResourceType, current: Object, given: Object, subresource: str
    ) -> Object:
        meta_now = _meta(current)
        if subresource == "status":
            new = copy.deepcopy(current)
            new["status"] = given.get("status", {})
        else:
            new = given
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            meta = new.setdefault("metadata", {})
            for field in _SERVER_FIELDS:
                if field in meta_now:
                    meta[field] = meta_now[field]
                else:
                    meta.pop(field, None)
            if rtype.has_status and subresource != "*":
                new["status"] = copy.deepcopy(current.get("status", {}))
            if rtype is r.SECRET:
                admission.default(rtype, new)
            admission.validate(rtype, new)
            if _spec_of(new) != _spec_of(current):
                meta["generation"] = int(meta_now.get("generation", 1)) + 1
        namespace, name = meta_now.get("namespace", ""), meta_now["name"]
        stored = self._commit(rtype, namespace, name, new, current)
        return self._finalize_if_released(rtype, stored) or stored

    def delete(
        self, rtype: ResourceType, namespace: str, name: str, options: DeleteOptions
    ) -> tuple[Object, bool]:
        """DELETE: (the object's last state, whether it is gone). A bound, running pod
        and an object with finalizers get a ``deletionTimestamp`` instead."""
        with self.lock:
            current = self.get(rtype, namespace, name)
            meta = _meta(current)
            if options.uid and options.uid != meta["uid"]:
                raise conflict(rtype, name, f"Precondition failed: UID in precondition: "
                               f"{options.uid}, UID in object meta: {meta['uid']}")  # fmt: skip
            if options.resource_version and options.resource_version != meta["resourceVersion"]:
                raise conflict(rtype, name)
            if meta.get("deletionTimestamp"):
                if rtype is r.POD and options.grace_seconds == 0:
                    return self._mark_deleted(rtype, current, 0)
                return current, False
            policy = options.propagation or rtype.default_propagation
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            new = copy.deepcopy(current)
            if policy == "Foreground":
                new["metadata"].setdefault("finalizers", []).append(FOREGROUND)
            grace = _grace(rtype, current, options.grace_seconds)
            if grace == 0 and not new["metadata"].get("finalizers"):
                return self._remove(rtype, current), True
            return self._mark_deleted(rtype, new, grace)

    def _mark_deleted(self, rtype: ResourceType, obj: Object, grace: int) -> tuple[Object, bool]:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        meta.setdefault("deletionTimestamp", clock.timestamp(grace))
        meta["deletionGracePeriodSeconds"] = grace
        current = self._objects[rtype][(meta.get("namespace", ""), meta["name"])]
        stored = self._commit(rtype, meta.get("namespace", ""), meta["name"], new, current)
        gone = self._finalize_if_released(rtype, stored)
        return (gone, True) if gone else (stored, False)

    def _finalize_if_released(self, rtype: ResourceType, obj: Object) -> Object | None:
        meta = _meta(obj)
        held = meta.get("finalizers") or meta.get("deletionGracePeriodSeconds", 0) > 0
        if meta.get("deletionTimestamp") and not held:
            return self._remove(rtype, obj)
        return None

    def _orphan_dependents(self, uid: str) -> None:
        for rtype, dependent in self.owned_by(uid):

            def drop(obj: Object) -> None:
                refs = [ref for ref in _meta(obj)["ownerReferences"] if ref.get("uid") != uid]
                obj["metadata"]["ownerReferences"] = refs

            self.mutate(
                rtype, _meta(dependent).get("namespace", ""), _meta(dependent)["name"], drop
            )

    def _remove(self, rtype: ResourceType, obj: Object) -> Object:
        meta = _meta(obj)
        key = (meta.get("namespace", ""), meta["name"])
        current = self._objects[rtype].pop(key)
        self._rv += 1
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._record(Change(self._rv, "DELETED", rtype, key[0], gone, current))
        return copy.deepcopy(gone)

    def _commit(
        self, rtype: ResourceType, namespace: str, name: str, new: Object, prev: Object | None
    ) -> Object:
        if prev is not None:
            new["metadata"]["resourceVersion"] = prev["metadata"]["resourceVersion"]
            if new == prev:
                return copy.deepcopy(prev)
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        for field in _OMITTED_WHEN_EMPTY:  # Go's omitempty: [] and {} are not sent
            if field in new["metadata"] and not new["metadata"][field]:
                del new["metadata"][field]
        self._objects[rtype][(namespace, name)] = new
        stored = copy.deepcopy(new)
        kind = "ADDED" if prev is None else "MODIFIED"
        self._record(Change(self._rv, kind, rtype, namespace, stored, prev))
        return copy.deepcopy(new)

    def _record(self, change: Change) -> None:
        self._history.record(change)
        self.changed.notify_all()

    # --- history -----------------------------------------------------------------

    def changes_after(
        self, rv: int, rtype: ResourceType, namespace: str | None
    ) -> tuple[list[Change], int]:
        """Changes of ``rtype`` (in ``namespace``, all if None) with resourceVersion > ``rv``
        and the resourceVersion they bring a watcher up to; raises 410 ``Expired`` when
        some of them are no longer kept."""
        with self.lock:
            return self._history.after(rv, rtype, namespace), max(rv, self._rv)

    def compact(self) -> None:
        """Forget the whole history (like etcd compaction): older watches get 410."""
        with self.lock:
            self._history.compact(self._rv)
            self.changed.notify_all()

    def wait(self, after_rv: int, timeout_s: float) -> None:
        """Block until a change newer than ``after_rv``, ``close()`` or the timeout."""
        with self.lock:
            if self._rv <= after_rv and not self.closed:
                self.changed.wait(timeout_s)

    def poke(self) -> None:
        """Wake every waiter (a knob changed: controllers should look again)."""
        with self.lock:
            self.changed.notify_all()

    def close(self) -> None:
        """Make watches end and waiters return."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    # --- helpers -----------------------------------------------------------------

    def _generate_name(self, rtype: ResourceType, namespace: str, prefix: str) -> str:
        prefix = prefix[:58]
        while True:
            name = prefix + random_suffix()
            if (namespace, name) not in self._objects[rtype]:
                return name

    @staticmethod
    def _ns(rtype: ResourceType, namespace: str) -> str:
        return namespace if rtype.namespaced else ""


def _meta(obj: Object) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def _spec_of(obj: Object) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _grace(rtype: ResourceType, pod: Object, requested: int | None) -> int:
    """A pod bound to a node and not finished waits for its kubelet; the rest go at once."""
    if rtype is not r.POD or requested == 0:
        return 0
    if not pod.get("spec", {}).get("nodeName"):
        return 0
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    default = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
    return max(1, int(requested if requested is not None else default))
