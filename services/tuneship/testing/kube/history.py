"""``History``: the bounded list of recent changes that watches resume from.

Like the API server's watch cache over etcd's compacted history: a watch can start
from any resourceVersion still covered; one older than what is kept gets 410
``Expired`` ("too old resource version: <asked> (<oldest kept>)").
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tuneship.testing.kube.errors import expired
from tuneship.testing.kube.resources import ResourceType


@dataclass(frozen=True)
class Change:
    """One stored change, as a watch reports it (``prev`` is None for ADDED)."""

    rv: int
    type: str
    rtype: ResourceType
    namespace: str
    obj: dict[str, Any]
    prev: dict[str, Any] | None


class History:
    """The last ``limit`` changes (not thread-safe: the store's lock guards it)."""

    def __init__(self, limit: int) -> None:
        self._changes: deque[Change] = deque()
        self._limit = limit
        self._compacted = 0  # every change with rv <= this has been dropped

    def record(self, change: Change) -> None:
        """Keep ``change``, dropping the oldest beyond the limit."""
        self._changes.append(change)
        while len(self._changes) > self._limit:
            self._compacted = self._changes.popleft().rv

    def after(self, rv: int, rtype: ResourceType, namespace: str | None) -> list[Change]:
        """Changes of ``rtype`` (in ``namespace``; all if None) newer than ``rv``;
        raises 410 ``Expired`` when some of them are no longer kept."""
        if rv < self._compacted:
            raise expired(rv, self._compacted + 1)
        return [
            change
            for change in self._changes
            if change.rv > rv
            and change.rtype is rtype
            and (namespace is None or change.namespace == namespace)
        ]

    def compact(self, rv: int) -> None:
        """Forget everything up to ``rv`` (the newest): older watches get 410."""
        self._changes.clear()
        self._compacted = rv
