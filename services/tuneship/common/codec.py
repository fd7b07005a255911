"""Every conversion between tuneship's domain types and their other forms, in one place.

A stage event travels as a domain dataclass (``common.events``) inside a stage, as a
``StageEvent`` message from a worker to the controller, as a JSON record in the
controller's event log, and as a ``StageEvent`` again inside the ``PipelineEvent``s
that ``Watch`` streams to clients. Jobs, artifacts and outcomes cross the stage RPC.
Domain code never imports protobuf; servicers and clients convert here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.common.events import Event, Log, Metrics, Progress
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.v1 import stage_pb2

_KINDS: dict[str, type[Progress] | type[Log] | type[Metrics]] = {
    "progress": Progress,
    "log": Log,
    "metrics": Metrics,
}


def event_kind(event: Event) -> str:
    """``progress``, ``log`` or ``metrics``: the event's name in records and messages."""
    for kind, cls in _KINDS.items():
        if isinstance(event, cls):
            return kind
    raise TypeError(f"not a stage event: {event!r}")


def event_to_record(event: Event) -> tuple[str, dict[str, Any]]:
    """(kind, JSON-able fields without the stage): how the controller stores an event."""
    fields = {k: v for k, v in dataclasses.asdict(event).items() if k != "stage"}
    return event_kind(event), json.loads(json.dumps(fields))


def event_from_record(stage: str, kind: str, payload: dict[str, Any]) -> Event | None:
    """The inverse of ``event_to_record``; None for a record that is no stage event."""
    cls = _KINDS.get(kind)
    if cls is None:
        return None
    fields = {k: v for k, v in payload.items() if k not in RECORD_EXTRAS}
    return cls(stage, **fields)


RECORD_EXTRAS = ("task", "task_seq")
"""Keys the controller adds to a recorded worker event: which task sent it, and its
number in that task's stream (what a re-attach skips)."""


def event_to_proto(
    event: Event, *, stage: str, seq: int, task_id: str = "", at: float | None = None
) -> stage_pb2.StageEvent:
    """A domain event as a ``StageEvent`` (``at``: when it happened, default now)."""
    message = stage_pb2.StageEvent(
        task_id=task_id, stage=stage, seq=seq, time=time.time() if at is None else at
    )
    if isinstance(event, Progress):
        message.progress.CopyFrom(
            stage_pb2.Progress(
                step=event.step,
                total=event.total,
                unit=event.unit,
                eta_s=-1.0 if event.eta_s is None else event.eta_s,
                message=event.message,
            )
        )
    elif isinstance(event, Log):
        message.log.CopyFrom(stage_pb2.LogLine(level=event.level, message=event.message))
    elif isinstance(event, Metrics):
        message.metrics.CopyFrom(stage_pb2.Metrics(values=dict(event.values), step=event.step or 0))
    return message


def event_from_proto(message: stage_pb2.StageEvent) -> Event | None:
    """A ``StageEvent`` back as a domain event; None for a result or a keepalive."""
    kind = message.WhichOneof("kind")
    if kind == "progress":
        p = message.progress
        eta = None if p.eta_s < 0 else p.eta_s
        return Progress(message.stage, int(p.step), int(p.total), p.unit, eta, p.message)
    if kind == "log":
        return Log(message.stage, message.log.message, message.log.level)
    if kind == "metrics":
        return Metrics(message.stage, dict(message.metrics.values), int(message.metrics.step))
    return None


def outcome_event(
    outcome: StageOutcome, *, stage: str, seq: int, task_id: str = ""
) -> stage_pb2.StageEvent:
    """The ``StageEvent`` that ends a stage's stream with its result."""
    message = stage_pb2.StageEvent(task_id=task_id, stage=stage, seq=seq, time=time.time())
    message.result.CopyFrom(outcome_to_proto(outcome))
    return message


def job_from_proto(request: stage_pb2.StageRequest) -> StageJob:
    """Validate the request envelope (the spec is validated by the stage)."""
    if not request.task_id:
        raise InvalidInput(
            "task_id is required (the idempotency key)", where="StageRequest.task_id"
        )
    if not request.spec_json:
        raise InvalidInput("spec_json is required", where="StageRequest.spec_json")
    inputs = {name: artifact_from_proto(ref) for name, ref in request.inputs.items()}
    return StageJob(
        request.task_id,
        request.pipeline,
        request.spec_json,
        inputs,
        request.output_prefix,
        request.attempt,
        request.attach_only,
        max(0, int(request.after_seq)),
    )


def job_to_proto(job: StageJob) -> stage_pb2.StageRequest:
    """The inverse of ``job_from_proto`` (used by clients)."""
    return stage_pb2.StageRequest(
        task_id=job.task_id,
        pipeline=job.pipeline,
        spec_json=job.spec_json,
        inputs={k: artifact_to_proto(v) for k, v in job.inputs.items()},
        output_prefix=job.output_prefix,
        attempt=job.attempt,
        attach_only=job.attach_only,
        after_seq=job.after_seq,
    )


def artifact_to_proto(artifact: Artifact) -> stage_pb2.ArtifactRef:
    return stage_pb2.ArtifactRef(key=artifact.key, sha256=artifact.sha256, size=artifact.size)


def artifact_from_proto(ref: stage_pb2.ArtifactRef) -> Artifact:
    return Artifact(ref.key, ref.sha256, ref.size)


def outcome_to_proto(outcome: StageOutcome) -> stage_pb2.StageResult:
    return stage_pb2.StageResult(
        outputs={k: artifact_to_proto(v) for k, v in outcome.outputs.items()},
        summary_json=json.dumps(outcome.summary, sort_keys=True, default=str),
        cached=outcome.cached,
    )


def outcome_from_proto(result: stage_pb2.StageResult) -> StageOutcome:
    outputs = {k: artifact_from_proto(v) for k, v in result.outputs.items()}
    summary = json.loads(result.summary_json) if result.summary_json else {}
    return StageOutcome(outputs, summary, result.cached)


def job_to_text(job: StageJob) -> str:
    """The job as one line of text (a serialized ``StageRequest``, base64): how the nodes
    of a multi-node training other than node 0 receive it, in their environment."""
    return base64.b64encode(job_to_proto(job).SerializeToString()).decode()


def job_from_text(text: str, where: str) -> StageJob:
    """The inverse of ``job_to_text``; ``InvalidInput`` at ``where`` when garbled."""
    try:
        request = stage_pb2.StageRequest.FromString(base64.b64decode(text, validate=True))
    except Exception as exc:  # binascii.Error, DecodeError
        raise InvalidInput(f"cannot decode the stage job: {exc}", where=where) from exc
    return job_from_proto(request)
