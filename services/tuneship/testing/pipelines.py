"""Waiting for pipelines a test submitted, with what they did when they did not finish."""

from __future__ import annotations

import time

from tuneship.client import PipelineClient, PipelineInfo

FINISHED = ("succeeded", "failed", "cancelled")


def wait_all(client: PipelineClient, ids: list[str], timeout_s: float) -> list[PipelineInfo]:
    """The pipelines ``ids`` once every one has finished; AssertionError after
    ``timeout_s`` with their state."""
    deadline = time.monotonic() + timeout_s
    infos: list[PipelineInfo] = []
    while time.monotonic() < deadline:
        infos = [client.get(i) for i in ids]
        if all(i.phase in FINISHED for i in infos):
            return infos
        time.sleep(0.5)
    raise AssertionError(f"not finished: {[i.as_dict() for i in infos]}")
