"""Where a stage attempt runs: one worker provider per stage.

- ``static``: fixed ``host:port`` addresses (embedded mode, ``tuneship serve`` on a host);
- ``k8s-job``: one Kubernetes Job per attempt, dialled at its pod IP (GPU stages);
- ``k8s-pool``: a Deployment behind a headless Service; endpoints from EndpointSlices.

Every provider speaks the same stage RPC with the same ``task_id`` idempotency,
streaming, keepalives, cancel and retry classification; they differ only in how they
find (or create) the worker. ``StageWorkers`` routes the scheduler's calls by stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from tuneship.common.jobs import StageJob
from tuneship.controller.scheduler import StageCall, StageFailure
from tuneship.controller.wire_clients import Channels, chat_stub


class WorkerProvider(Protocol):
    """Finds (or starts) the worker for each attempt of one stage."""

    kind: str

    def run(self, job: StageJob, reattach: bool) -> StageCall:
        """Start the attempt (``reattach``: it may already run somewhere; follow it)."""
        ...

    def cancel(self, task_id: str) -> bool:
        """Stop the attempt wherever it runs; False when it is not known."""
        ...

    def capacity(self) -> int | None:
        """Attempts that can run at once now (None: the configured limit decides)."""
        ...

    def address(self) -> str | None:
        """A worker for the stage service's other RPCs (chat), if one is up."""
        ...

    def close(self) -> None: ...


class StageWorkers:
    """The scheduler's ``Workers`` port: each call goes to its stage's provider."""

    def __init__(self, providers: dict[str, WorkerProvider], channels: Channels) -> None:
        self.providers = providers
        self.channels = channels

    def run(self, stage: str, job: StageJob, reattach: bool = False) -> StageCall:
        return self.providers[stage].run(job, reattach)

    def cancel(self, stage: str, task_id: str) -> bool:
        return self.providers[stage].cancel(task_id)

    def capacity(self, stage: str) -> int | None:
        return self.providers[stage].capacity()

    def kinds(self) -> dict[str, str]:
        return {stage: p.kind for stage, p in self.providers.items()}

    def chat(self, request: Any) -> Iterator[Any]:
        """Forward a ``ChatRequest`` to a serving worker (streams its ``ChatChunk``s)."""
        address = self.providers["publish"].address()
        if address is None:
            raise StageFailure("UNAVAILABLE", "no serving worker is ready", True)
        yield from chat_stub(self.channels.get(address), request)

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()
        self.channels.close()
