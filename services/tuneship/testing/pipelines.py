"""Running and waiting for pipelines a test submitted, with what they did when they did
not finish."""

from __future__ import annotations

import time
from contextlib import ExitStack

from tuneship.cli.embedded import Embedded, start_embedded
from tuneship.cli.serve import open_backend
from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.settings import Settings

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


def start_embedded_llama(settings: Settings, stack: ExitStack) -> Embedded:
    """The embedded stack of ``tuneship run`` with the llama-server backend (no Ollama
    is asked), closed with ``stack``."""
    backend = open_backend("llama-server", "http://127.0.0.1:9", settings, stack)
    embedded = start_embedded(settings, backend, stack)
    stack.callback(embedded.close)
    return embedded


def run_batch(
    settings: Settings, specs: list[str], stack: ExitStack, timeout_s: float = 900
) -> tuple[Embedded, list[PipelineInfo]]:
    """Submit ``specs`` as one batch to an embedded stack (llama-server backend, closed
    with ``stack``) and wait for them; AssertionError naming each stage's error unless
    every one succeeded. Returns the stack and the finished pipelines."""
    embedded = start_embedded_llama(settings, stack)
    client = PipelineClient(embedded.address)
    finals = wait_all(client, [info.id for info in client.submit_batch(specs)], timeout_s)
    assert [f.phase for f in finals] == ["succeeded"] * len(specs), [
        (f.name, [(s.name, s.phase, s.error) for s in f.stages]) for f in finals
    ]
    return embedded, finals
