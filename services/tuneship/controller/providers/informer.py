"""A cache of one kind of Kubernetes object, kept current by list + watch.

The pattern of client-go's informers, reduced to what the providers need: list once
(that gives a resourceVersion), then watch from it; a watch that ends is resumed from
the last resourceVersion seen (bookmarks included); ``410 Gone`` (the server compacted
its history past that version) means list again. Objects are kept as the API's JSON
dicts (camelCase, as in manifests). Waiters block on one condition variable instead of
polling the API server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("tuneship.controller.k8s")

ListCall = Callable[..., Any]
"""A namespaced list method of the generated client, e.g. ``BatchV1Api.list_namespaced_job``."""


class Informer:
    """The objects of one kind in ``namespace`` matching ``label_selector``, by name."""

    def __init__(
        self,
        list_call: ListCall,
        namespace: str,
        label_selector: str = "",
        *,
        what: str = "objects",
        watch_timeout_s: int = 60,
        retry_s: float = 1.0,
    ) -> None:
        self.list_call = list_call
        self.namespace = namespace
        self.label_selector = label_selector
        self.what = what
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.changed = threading.Condition()
        self.relists = 0
        """How many times the full list was read (1 + one per 410 or broken watch)."""
        self._objects: dict[str, dict[str, Any]] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self, sync_timeout_s: float = 30.0) -> Informer:
        """Start watching; waits (up to ``sync_timeout_s``) for the first list."""
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.what}", daemon=True)
        self._thread.start()
        self._synced.wait(sync_timeout_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        with self.changed:
            self.changed.notify_all()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def get(self, name: str) -> dict[str, Any] | None:
        with self.changed:
            return self._objects.get(name)

    def items(self) -> list[dict[str, Any]]:
        with self.changed:
            return list(self._objects.values())

    def wait(self, timeout_s: float) -> None:
        """Block until something changes (or ``timeout_s`` passes)."""
        with self.changed:
            self.changed.wait(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self._follow(version)
            except ApiException as error:
                if error.status == 410:
                    log.info("watch of %s expired (410 Gone); listing again", self.what)
                    continue
                log.warning("listing/watching %s failed: %s %s", self.what, error.status,
                            error.reason)  # fmt: skip
            except Exception as error:  # the API server went away: retry, never die
                log.warning("listing/watching %s failed: %s", self.what, error)
            self._stop.wait(self.retry_s)

    def _list(self) -> str:
        response = self.list_call(
            self.namespace, label_selector=self.label_selector, _preload_content=False
        )
        listing = json.loads(response.data)
        with self.changed:
            self._objects = {o["metadata"]["name"]: o for o in listing.get("items") or []}
            self.relists += 1
            self.changed.notify_all()
        self._synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _follow(self, version: str) -> None:
        """Apply watch events from ``version`` on until stopped; raises on a broken watch."""
        while not self._stop.is_set():
            self._watch = watch.Watch()
            started = time.monotonic()
            for event in self._watch.stream(
                self.list_call, self.namespace, label_selector=self.label_selector,
                resource_version=version, timeout_seconds=self.watch_timeout_s,
                allow_watch_bookmarks=True,
            ):  # fmt: skip
                if self._stop.is_set():
                    return
                obj = event["raw_object"]  # the client raises ApiException on ERROR events
                version = obj["metadata"].get("resourceVersion") or version
                if event["type"] != "BOOKMARK":
                    self._apply(event["type"], obj)
            if time.monotonic() - started < 0.05 and not self._stop.is_set():
                self._stop.wait(0.2)  # a server that closes at once: do not spin

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self.changed:
            if kind == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj
            self.changed.notify_all()
