"""gRPC clients for the stage workers: channels, the stage call, cancel and chat."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tuneship.common.codec import event_from_proto, job_to_proto, outcome_from_proto
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stages import stage_named
from tuneship.common.wire import RETRYABLE
from tuneship.controller.scheduler import Numbered, StageFailure
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
        self._answered = False

    def __iter__(self) -> Iterator[Numbered | StageOutcome]:
        try:
            for message in self._call:
                self._answered = True
                if message.seq == 0:
                    yield None  # type: ignore[misc]  # keepalive: proves the worker is alive
                elif message.WhichOneof("kind") == "result":
                    yield outcome_from_proto(message.result)
                    return
                else:
                    event = event_from_proto(message)
                    if event is not None:
                        yield Numbered(int(message.seq), event)
        except grpc.RpcError as error:
            failure = failure_of(error)
            failure.reached = self._answered
            raise failure from error

    def cancel(self) -> None:
        self._call.cancel()


class Channels:
    """One gRPC channel per worker address, opened on first use by ``dial`` (default:
    in the clear, no token; ``common.guard.worker_dialer`` adds the worker token and TLS)."""

    def __init__(self, dial: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> None:
        self._dial = dial
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = self._dial(address)
            return self._channels[address]

    def drop(self, address: str) -> None:
        """Close the channel of a worker that went away (a pod IP is not reused soon)."""
        with self._lock:
            channel = self._channels.pop(address, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


def _stub(channel: grpc.Channel, stage: str) -> Any:
    return getattr(workers_pb2_grpc, f"{stage_named(stage).service}Stub")(channel)


def start_stage(channel: grpc.Channel, stage: str, job: StageJob) -> GrpcStageCall:
    """Call the stage RPC of ``stage`` with ``job`` (it starts or re-attaches by task_id)."""
    method = getattr(_stub(channel, stage), stage_named(stage).method)
    return GrpcStageCall(method(job_to_proto(job)))


def cancel_task(channel: grpc.Channel, stage: str, task_id: str) -> bool:
    """Ask the worker behind ``channel`` to cancel ``task_id`` (False if it could not)."""
    try:
        answer = _stub(channel, stage).Cancel(stage_pb2.CancelRequest(task_id=task_id), timeout=10)
    except grpc.RpcError:
        return False
    return bool(answer.cancelled)


def chat_stub(
    channel: grpc.Channel, request: workers_pb2.ChatRequest
) -> Iterator[workers_pb2.ChatChunk]:
    """Forward a chat to the serving service behind ``channel`` (streams its chunks)."""
    try:
        yield from _stub(channel, "publish").Chat(request)
    except grpc.RpcError as error:
        raise failure_of(error) from error
