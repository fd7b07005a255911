"""Waiting for the pod a stage attempt streams from, the same for a Job and a JobSet."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from tuneship.controller.providers.informer import Informer
from tuneship.controller.scheduler import StageFailure, Waiting

State = Callable[[float], tuple[str, dict[str, Any] | None]]
"""(why it waits, the Ready pod or None) since ``started``; raises when it cannot go on."""


def until_ready(
    state: State,
    closing: threading.Event,
    pods: Informer,
    unschedulable_timeout_s: float,
    what: str,
) -> Generator[Waiting | None, None, dict[str, Any]]:
    """Keepalives and reasons until ``state`` gives a Ready pod; returns it. ``what``
    names the object in messages ("job ts-train-…", "a pod of JobSet ts-train-…")."""
    said = ""
    unschedulable_since: float | None = None
    started = time.monotonic()
    while True:
        if closing.is_set():
            raise StageFailure("CANCELLED", f"stopped following {what}", False)
        waiting, pod = state(started)
        if pod is not None:
            return pod
        if waiting.startswith("waiting for a node"):
            unschedulable_since = unschedulable_since or time.monotonic()
            if time.monotonic() - unschedulable_since > unschedulable_timeout_s:
                raise StageFailure(
                    "UNAVAILABLE",
                    f"no node could run {what} for {unschedulable_timeout_s:.0f}s: {waiting}",
                    True,
                )
        else:
            unschedulable_since = None
        if waiting != said:
            said = waiting
            yield Waiting(waiting)
        else:
            yield None  # keepalive: the scheduler's heartbeat does not run out while queued
        pods.wait(1.0)
