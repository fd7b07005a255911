"""The ``static`` provider: a stage served at one fixed ``host:port``."""

from __future__ import annotations

from tuneship.common.jobs import StageJob
from tuneship.controller.wire_clients import Channels, GrpcStageCall, cancel_task, start_stage


class StaticProvider:
    """Every attempt goes to ``address``; the worker there re-attaches by task_id."""

    kind = "static"

    def __init__(self, stage: str, address: str, channels: Channels) -> None:
        self.stage, self._address, self.channels = stage, address, channels

    def run(self, job: StageJob, reattach: bool) -> GrpcStageCall:
        return start_stage(self.channels.get(self._address), self.stage, job)

    def cancel(self, task_id: str) -> bool:
        return cancel_task(self.channels.get(self._address), self.stage, task_id)

    def capacity(self) -> int | None:
        return None

    def address(self) -> str | None:
        return self._address

    def close(self) -> None:
        return None
