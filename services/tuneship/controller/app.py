"""Assembling a controller: state store, scheduler, worker clients and the gRPC server."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tuneship.common.auth import AuthSettings
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.guard import user_api_security, worker_dialer
from tuneship.common.jobs import Artifact
from tuneship.common.stages import STAGES, stage_named
from tuneship.common.store.base import ArtifactStore
from tuneship.common.wire import Server, start_server
from tuneship.controller.database import Reconnect
from tuneship.controller.inputs import StoreInputs
from tuneship.controller.metrics import ControllerMetrics
from tuneship.controller.providers import StageWorkers
from tuneship.controller.providers.build import build_workers
from tuneship.controller.providers.kube import KubeSettings
from tuneship.controller.scheduler import RetryPolicy, Scheduler
from tuneship.controller.servicer import (
    SERVICE_NAME,
    ChatForwarder,
    InputUploader,
    PipelineServicer,
    add_to_server,
)
from tuneship.controller.state import PipelineView, StateStore
from tuneship.controller.tables import Phase


def merged_model(state: StateStore, pipeline_id: str, field: str) -> str:
    """The manifest key of pipeline ``pipeline_id``'s merged model (``pipeline:<id>``)."""
    try:
        pipeline = state.get(pipeline_id)
    except NotFound:
        raise InvalidInput(
            f"pipeline:{pipeline_id}: this controller has no pipeline {pipeline_id!r}",
            where=field,
            hint="name a pipeline id as `tuneship list` shows it",
        ) from None
    merge = pipeline.stage("merge")
    if merge.phase != Phase.SUCCEEDED or "merge" not in merge.outputs:
        raise FailedPrecondition(
            f"pipeline:{pipeline_id}: its merge stage is {merge.phase.value}, so there is no "
            "merged model to start from yet",
            where=field,
            hint="submit this spec once that pipeline's merge has succeeded "
            f"(`tuneship watch {pipeline_id}`)",
        )
    return str(merge.outputs["merge"]["key"])


def inputs_for(pipeline: PipelineView, stage: str) -> dict[str, Artifact]:
    """The artifacts a stage of ``pipeline`` reads (absent optional inputs are skipped)."""
    chosen: dict[str, Artifact] = {}
    for name, source in stage_named(stage).inputs.items():
        kind, _, ref = source.partition(":")
        if kind == "input" and ref in pipeline.inputs:
            chosen[name] = Artifact(**pipeline.inputs[ref])
        elif kind == "stage":
            outputs = pipeline.stage(ref).outputs
            if ref in outputs:
                chosen[name] = Artifact(**outputs[ref])
    return chosen


@dataclass
class ControllerSettings:
    """How the controller runs (built from the environment by the entry point)."""

    state_url: str
    """SQLAlchemy URL: sqlite:///path/state.db, or postgresql+psycopg://..."""
    workers: dict[str, str]
    """Stage name -> host:port of its service (stages on the ``static`` provider)."""
    limits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 1))
    """Per-stage concurrency; a stage left out runs as many attempts as its provider's
    capacity (a pool's Ready pods) allows."""
    providers: dict[str, str] = field(default_factory=dict)
    """Stage name -> worker provider: static (default), k8s-job, k8s-pool."""
    kube: KubeSettings | None = None
    """The Kubernetes API and the chart's Job templates and pools (k8s-* providers)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat_timeout_s: float = 60.0
    unreachable_timeout_s: float = 600.0
    """How long a stage waits for workers that do not answer before it fails."""
    state_reconnect_s: float = 30.0
    """How long a state call waits for the database to come back (a restart)."""
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (``/metrics``); None: not served. Always
    plain HTTP without a token (docs/security.md)."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    """User tokens and TLS of the user API; the worker token and TLS to the workers."""


@dataclass
class Controller:
    """A running controller; ``stop`` shuts it down cleanly."""

    state: StateStore
    scheduler: Scheduler
    workers: StageWorkers
    server: Server
    metrics: ControllerMetrics
    metrics_server: Any = None

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.server.stop()
        self.scheduler.stop()
        self.workers.close()
        self.state.close()


def start_controller(
    settings: ControllerSettings,
    upload_inputs: InputUploader,
    chat: ChatForwarder | None = None,
    store: ArtifactStore | None = None,
) -> Controller:
    """Open the state, start the scheduler (re-attaching to running stages) and serve.

    ``store``: where the pipelines' outputs are read from for ``ListArtifacts`` and
    ``ReadArtifact`` (default: the store of ``upload_inputs`` when it is one)."""
    state = StateStore(settings.state_url, Reconnect(give_up_after_s=settings.state_reconnect_s))
    workers = build_workers(
        settings.workers, settings.providers, settings.kube, worker_dialer(settings.auth)
    )
    scheduler = Scheduler(
        state, workers, inputs_for, limits=settings.limits, retry=settings.retry,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        unreachable_timeout_s=settings.unreachable_timeout_s,
    )  # fmt: skip
    metrics = ControllerMetrics(state, scheduler.running)
    scheduler.observer = metrics
    forward = chat or workers.chat
    if isinstance(upload_inputs, StoreInputs):
        upload_inputs.merged_models = partial(merged_model, state)
        store = store or upload_inputs.store
    servicer = PipelineServicer(state, scheduler, upload_inputs, forward, store)
    server = start_server(
        [(add_to_server, servicer)],
        [SERVICE_NAME],
        host=settings.host,
        port=settings.port,
        security=user_api_security(settings.auth),
    )
    scheduler.start()
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = metrics.serve(settings.host, settings.metrics_port)
    return Controller(state, scheduler, workers, server, metrics, metrics_server)
