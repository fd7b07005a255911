"""A controller and four scripted stage workers on real gRPC, in this process.

For tests of the controller and its clients: everything between them is real; the
stages' work is scripted (``ScriptedStage``) so a pipeline takes milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.auth import AuthSettings, ClientTls
from tuneship.common.guard import dial, stage_security
from tuneship.common.jobs import Artifact
from tuneship.common.stages import STAGES
from tuneship.common.store.base import ArtifactStore
from tuneship.common.wire import Server, StageServicer, stage_service
from tuneship.controller.app import Controller, ControllerSettings, start_controller
from tuneship.controller.scheduler import RetryPolicy
from tuneship.controller.servicer import InputUploader
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc, workers_pb2


@dataclass
class Cluster:
    """Scripted workers, their servicers and servers, the controller and a client stub."""

    stages: dict[str, ScriptedStage]
    servicers: dict[str, StageServicer]
    workers: list[Server]
    controller: Controller
    stub: pipeline_pb2_grpc.PipelineServiceStub
    state_url: str = ""

    def wait(self, pipeline_id: str, *phases: int, timeout_s: float = 20) -> pipeline_pb2.Pipeline:
        """Poll until the pipeline is in one of ``phases``."""
        got = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.stub.Get(pipeline_pb2.GetRequest(id=pipeline_id))
            if got.phase in phases:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{pipeline_id} did not reach {phases}: {got}")

    def stop(self) -> None:
        self.controller.stop()
        for worker in self.workers:
            worker.stop(0)


def upload_nothing(spec: Any) -> dict[str, Artifact]:
    return {
        "base": Artifact("inputs/base/manifest.json"),
        "train": Artifact("inputs/t/manifest.json"),
    }


def start_cluster(
    tmp_path: Path,
    stages: dict[str, ScriptedStage],
    capacity: dict[str, int],
    limits: dict[str, int] | None = None,
    heartbeat_s: float = 30,
    unreachable_s: float = 600,
    auth: AuthSettings | None = None,
    worker_auth: AuthSettings | None = None,
    client_tls: ClientTls | None = None,
    upload_inputs: InputUploader = upload_nothing,
    state_url: str | None = None,
    store: ArtifactStore | None = None,
) -> Cluster:
    """``auth``: the controller's tokens and TLS (and how it dials the workers);
    ``worker_auth``: the stage servers'; the stub sends ``auth``'s first user token,
    over TLS checked with ``client_tls`` when given. None: no authentication at all.
    ``store``: where the controller reads the pipelines' files (ListArtifacts)."""
    security = stage_security(worker_auth) if worker_auth is not None else None
    servicers: dict[str, StageServicer] = {}
    workers: list[Server] = []
    for name in STAGES:
        servicer = StageServicer(
            name, stages[name], capacity=capacity.get(name, 1), keepalive_s=0.5
        )
        extra: dict[str, Any] | None = {"Chat": chat_echo} if name == "publish" else None
        servicers[name] = servicer
        workers.append(stage_service(servicer, extra).start(security=security))
    settings = ControllerSettings(
        state_url=state_url or f"sqlite:///{tmp_path / 'state.db'}",
        workers={name: w.address for name, w in zip(STAGES, workers, strict=True)},
        limits=limits or dict.fromkeys(STAGES, 1),
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2),
        heartbeat_timeout_s=heartbeat_s,
        unreachable_timeout_s=unreachable_s,
        auth=auth or AuthSettings(),
    )
    controller = start_controller(settings, upload_inputs, store=store)
    token = auth.api_tokens[0] if auth is not None and auth.api_tokens else None
    channel = dial(controller.address, token=token, tls=client_tls)
    stub = pipeline_pb2_grpc.PipelineServiceStub(channel)
    return Cluster(stages, servicers, workers, controller, stub, settings.state_url)


def chat_echo(request: workers_pb2.ChatRequest, context: Any) -> Iterator[workers_pb2.ChatChunk]:
    yield workers_pb2.ChatChunk(content=f"{request.model} heard {request.messages[-1].content}")
    yield workers_pb2.ChatChunk(done=True, done_reason="stop")
