"""gRPC clients for the stage workers: the scheduler's ``Workers`` port over the wire."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from tuneship.common.codec import event_from_proto, job_to_proto, outcome_from_proto
from tuneship.common.events import Event
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stages import stage_named
from tuneship.common.wire import RETRYABLE
from tuneship.controller.scheduler import StageFailure
from tuneship.v1 import stage_pb2, workers_pb2, workers_pb2_grpc


def failure_of(error: grpc.RpcError) -> StageFailure:
    """A gRPC error as a scheduler failure with its retry semantics."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return StageFailure(code.name, details or code.name, code in RETRYABLE)


class GrpcStageCall:
    """One streaming stage RPC as events followed by the outcome."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Event | StageOutcome]:
        try:
            for message in self._call:
                if message.seq == 0:
                    yield None  # type: ignore[misc]  # keepalive: proves the worker is alive
                elif message.WhichOneof("kind") == "result":
                    yield outcome_from_proto(message.result)
                    return
                else:
                    event = event_from_proto(message)
                    if event is not None:
                        yield event
        except grpc.RpcError as error:
            raise failure_of(error) from error

    def cancel(self) -> None:
        self._call.cancel()


class GrpcWorkers:
    """Channels to the stage services, by stage name."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses
        self._channels = {stage: grpc.insecure_channel(a) for stage, a in addresses.items()}
        self._stubs: dict[str, Any] = {
            stage: getattr(workers_pb2_grpc, f"{stage_named(stage).service}Stub")(channel)
            for stage, channel in self._channels.items()
        }

    def run(self, stage: str, job: StageJob) -> GrpcStageCall:
        method = getattr(self._stubs[stage], stage_named(stage).method)
        return GrpcStageCall(method(job_to_proto(job)))

    def cancel(self, stage: str, task_id: str) -> bool:
        try:
            answer = self._stubs[stage].Cancel(stage_pb2.CancelRequest(task_id=task_id), timeout=10)
        except grpc.RpcError:
            return False
        return bool(answer.cancelled)

    def chat(self, request: workers_pb2.ChatRequest) -> Iterator[workers_pb2.ChatChunk]:
        """Forward a chat to the serving service (streams its chunks)."""
        try:
            yield from self._stubs["publish"].Chat(request)
        except grpc.RpcError as error:
            failure = failure_of(error)
            raise StageFailure(failure.code, failure.message, failure.retryable) from error

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
