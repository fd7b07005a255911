"""Core v1 Events, recorded the way the controllers' event recorders do: one Event per
(object, reason, message), its ``count`` and ``lastTimestamp`` bumped when it repeats."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from tuneship.testing.kube import clock
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.store import ObjectStore


def record_event(
    store: ObjectStore,
    involved: dict[str, Any],
    event_type: str,
    reason: str,
    message: str,
    component: str,
) -> None:
    """Record (or repeat) an Event about ``involved`` (a stored object with kind/apiVersion)."""
    meta = involved["metadata"]
    namespace = meta.get("namespace") or "default"
    digest = hashlib.sha256(f"{meta['uid']}/{reason}/{message}".encode()).hexdigest()[:16]
    name = f"{meta['name']}.{digest}"
    now = clock.timestamp()

    def repeat(event: dict[str, Any]) -> None:
        event["count"] = int(event.get("count", 1)) + 1
        event["lastTimestamp"] = now

    if store.mutate(r.EVENT, namespace, name, repeat) is not None:
        return
    event = {
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {
            "kind": involved.get("kind"), "namespace": namespace, "name": meta["name"],
            "uid": meta["uid"], "apiVersion": involved.get("apiVersion"),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason, "message": message, "type": event_type,
        "source": {"component": component}, "firstTimestamp": now, "lastTimestamp": now,
        "count": 1, "reportingComponent": component, "reportingInstance": "",
    }  # fmt: skip
    with contextlib.suppress(ApiError):  # the namespace is gone: nobody reads the event
        store.create(r.EVENT, namespace, event)
