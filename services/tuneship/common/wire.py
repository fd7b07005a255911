"""The gRPC side shared by every tuneship server: error mapping, server setup and the
generic stage RPC.

Domain code never imports protobuf; the conversions live in ``codec.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuneship.common.codec import event_to_proto, job_from_proto, outcome_event
from tuneship.common.errors import FailedPrecondition, NotFound, TuneshipError
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stages import stage_named
from tuneship.common.tasks import Finished, Task, TaskRegistry, TaskState
from tuneship.v1 import stage_pb2, workers_pb2_grpc

log = logging.getLogger("tuneship.wire")

STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "CANCELLED": grpc.StatusCode.CANCELLED,
    "ABORTED": grpc.StatusCode.ABORTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "DATA_LOSS": grpc.StatusCode.DATA_LOSS,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def status_of(error: TuneshipError) -> grpc.StatusCode:
    """The gRPC status a tuneship error maps to."""
    return STATUS.get(error.status, grpc.StatusCode.INTERNAL)


ANSWERED_KEY = "tuneship-answered"
"""Trailing metadata on every error a tuneship server sends: the server answered (a
client tells "the controller said UNAVAILABLE" from "the controller is unreachable")."""


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    context.set_trailing_metadata(((ANSWERED_KEY, "1"),))
    if isinstance(exc, TuneshipError):
        code = status_of(exc)
        message = exc.render() if code is not grpc.StatusCode.INTERNAL else "internal error"
        if code is grpc.StatusCode.INTERNAL:
            log.error("internal error: %s", exc.render())
        context.abort(code, message)
    log.exception("unexpected error", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error (details in the server log)")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps the tuneship error hierarchy to status codes, for every method of a server.

    Unknown exceptions become INTERNAL with a generic message; details go to the log.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner_uu(request, context)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    _abort(context, exc)

            return handler._replace(unary_unary=unary)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from inner_us(request, context)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    _abort(context, exc)

            return handler._replace(unary_stream=stream)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            def upload(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                try:
                    return inner_su(requests, context)
                except grpc.RpcError:
                    raise  # the client went away: there is nobody to answer
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    _abort(context, exc)

            return handler._replace(stream_unary=upload)
        return handler


def _is_abort(exc: Exception) -> bool:
    # context.abort raises a bare Exception subclass internal to grpc.
    return type(exc).__name__ == "_AbortionError" or (type(exc) is Exception and not exc.args)


@dataclass(frozen=True)
class ServerSecurity:
    """What guards a server (built by ``common.guard`` from ``common.auth`` settings):
    interceptors that run before the error mapping (the token check), and TLS
    credentials (None: in the clear)."""

    interceptors: list[grpc.ServerInterceptor] = field(default_factory=list)
    credentials: grpc.ServerCredentials | None = None


@dataclass
class Server:
    """A running gRPC server with health checking and reflection."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    services: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace_s: float = 2.0) -> None:
        for name in ["", *self.services]:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace_s).wait()


def start_server(
    register: list[tuple[Callable[[Any, grpc.Server], None], Any]],
    service_names: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 16,
    security: ServerSecurity | None = None,
) -> Server:
    """Start a server for the given servicers; ``port`` 0 picks a free one. Without
    ``security`` it takes any caller, in the clear (loopback, tests)."""
    security = security or ServerSecurity()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[*security.interceptors, ErrorInterceptor()],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    for add, servicer in register:
        add(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, reflection.SERVICE_NAME], server)
    try:
        if security.credentials is not None:
            bound = server.add_secure_port(f"{host}:{port}", security.credentials)
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc's only word for it: "Failed to bind to address"
        bound = 0
        cause: Exception | None = exc
    else:
        cause = None
    if not bound:
        raise FailedPrecondition(
            f"cannot listen on {host}:{port}: the address is in use or not this machine's",
            where="--host/--port",
            hint="stop what holds the port (`ss -ltnp`) or choose another --port",
        ) from cause
    server.start()
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Server(server, bound, health_servicer, service_names)


StageRunner = Callable[[StageJob, Any], StageOutcome]


class StageServicer:
    """The generic stage RPC: start or re-attach by task_id, stream events, cancel.

    Each stage service supplies ``runner(job, sink) -> StageOutcome``; this class is
    the only place that knows how tasks map to streams.
    """

    def __init__(
        self, stage: str, runner: StageRunner, capacity: int = 1, keepalive_s: float = 5.0
    ) -> None:
        self.stage = stage
        self.keepalive_s = keepalive_s
        self.runner = runner
        self.tasks = TaskRegistry(stage, capacity)
        self.only_task: str | None = None
        """Serve this task id alone and refuse others (``tuneship serve --once``)."""
        self.delivered = threading.Event()
        """Set once the end of ``only_task`` (its result or error) went out on a stream."""

    def run(
        self, request: stage_pb2.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[stage_pb2.StageEvent]:
        job = job_from_proto(request)
        if self.only_task is not None and job.task_id != self.only_task:
            raise FailedPrecondition(
                f"this {self.stage} worker serves only task {self.only_task}, not {job.task_id}",
                hint="a one-task worker (a Job pod) is started for each attempt",
            )
        if job.attach_only:
            known = self.tasks.get(job.task_id)
            if known is None:
                raise NotFound(f"task {job.task_id} is not on this {self.stage} worker")
            task = known
        else:
            task = self.tasks.start_or_attach(
                job.task_id, lambda sink: self.runner(job, sink),
                log_ids={"pipeline_id": job.pipeline, "attempt": job.attempt},
            )  # fmt: skip
        yield from self.stream(task, context, job.after_seq)

    def stream(
        self, task: Task, context: grpc.ServicerContext, after_seq: int = 0
    ) -> Iterator[stage_pb2.StageEvent]:
        """Replay (after ``after_seq``) then follow a task; seq 0 is a keepalive."""
        seq = 0
        for item in task.follow(idle_s=self.keepalive_s, alive=context.is_active):
            if item is None:
                yield stage_pb2.StageEvent(task_id=task.task_id, stage=self.stage, seq=0)
                continue
            seq += 1
            if seq <= after_seq and not isinstance(item, Finished):
                continue  # the caller recorded it before
            if not isinstance(item, Finished):
                yield event_to_proto(item, stage=self.stage, seq=seq, task_id=task.task_id)
            elif item.state is TaskState.SUCCEEDED:
                yield outcome_event(item.result, stage=self.stage, seq=seq, task_id=task.task_id)
                self._delivered(task)
            else:
                assert item.error is not None
                self._delivered(task)
                raise item.error

    def _delivered(self, task: Task) -> None:
        if task.task_id == self.only_task:
            self.delivered.set()

    def outcome(self, task_id: str) -> Finished | None:
        """How the task ended, or None while it runs (or if it is unknown)."""
        task = self.tasks.get(task_id)
        if task is None or task.state is TaskState.RUNNING:
            return None
        last = task.items[-1]
        return last if isinstance(last, Finished) else None

    def cancel(
        self, request: stage_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> stage_pb2.CancelResponse:
        return stage_pb2.CancelResponse(cancelled=self.tasks.cancel(request.task_id))


@dataclass(frozen=True)
class StageService:
    """A stage's gRPC service, ready for ``start_server``, and the servicer behind it."""

    register: Callable[[Any, grpc.Server], None]
    """The generated ``add_<Service>Servicer_to_server``."""
    servicer: Any
    """The grpc servicer instance (generated base class, our methods)."""
    name: str
    """The fully qualified service name (health checks, reflection)."""
    stage: StageServicer
    """Tasks, streaming and cancel: what tests and the embedded mode look into."""

    def start(
        self, *, host: str = "127.0.0.1", port: int = 0, security: ServerSecurity | None = None
    ) -> Server:
        """Serve it alone on ``host:port`` (port 0 picks a free one)."""
        return start_server(
            [(self.register, self.servicer)], [self.name], host=host, port=port,
            security=security,
        )  # fmt: skip


def stage_service(
    stage: StageServicer, extra: dict[str, Callable[[Any, Any], Any]] | None = None
) -> StageService:
    """The gRPC service of a stage servicer (its stage RPC and Cancel, from the stage
    table). ``extra`` adds a service's own RPCs by name (ServingService's Chat and
    friends), each a ``(request, context)`` callable.
    """
    entry = stage_named(stage.stage)
    service = entry.service
    generated = getattr(workers_pb2_grpc, f"{service}Servicer")
    add = getattr(workers_pb2_grpc, f"add_{service}Servicer_to_server")

    def run(self: Any, request: Any, context: Any) -> Any:
        return stage.run(request, context)

    def cancel(self: Any, request: Any, context: Any) -> Any:
        return stage.cancel(request, context)

    methods: dict[str, Any] = {entry.method: run, "Cancel": cancel}
    methods.update({name: staticmethod(fn) for name, fn in (extra or {}).items()})
    servicer = type(f"{service}Impl", (generated,), methods)()
    return StageService(add, servicer, entry.full_service, stage)
