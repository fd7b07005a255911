"""Stage events: how a long-running stage reports progress, logs, metrics and its result.

Library functions take an ``EventSink``; the CLI renders events with rich, the gRPC
servicers turn them into ``StageEvent`` messages, tests collect them in a list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Progress:
    """``step`` of ``total`` units done (``total`` 0 when unknown); ``eta_s`` when known."""

    stage: str
    step: int
    total: int
    unit: str = "steps"
    eta_s: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Log:
    """A line for humans (``level``: info, warning, error)."""

    stage: str
    message: str
    level: str = "info"


@dataclass(frozen=True)
class Metrics:
    """Numeric measurements at a step, e.g. ``{"loss": 1.2, "tokens_per_s": 900}``."""

    stage: str
    values: dict[str, float]
    step: int | None = None


Event = Progress | Log | Metrics


class EventSink(Protocol):
    """Receives a stage's events in order.

    A sink raises only ``Cancelled`` (when the task was asked to stop), so stages
    that emit regularly are cancellable without any other hook.
    """

    def emit(self, event: Event) -> None: ...


class NullSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        return None


@dataclass
class ListSink:
    """Keeps every event (tests, and servicers replaying to late watchers)."""

    events: list[Event] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, kind: type[Any]) -> list[Any]:
        """The events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]


class Eta:
    """Estimates the time left from the rate so far."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.monotonic()

    def seconds_left(self, done: int) -> float | None:
        if done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return elapsed / done * max(self.total - done, 0)
