"""``PipelineService``: the user API of the controller, over the state store and scheduler."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, Protocol, runtime_checkable

import grpc

from tuneship.common.codec import (
    artifact_to_proto,
    event_from_record,
    event_to_proto,
)
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.jobs import Artifact
from tuneship.common.manifest import FileEntry
from tuneship.common.spec import PipelineSpec, parse_spec
from tuneship.common.store.base import ArtifactStore
from tuneship.controller.artifacts import (
    StoredFile,
    find_file,
    pipeline_files,
    read_verified,
    require_store,
)
from tuneship.controller.inputs import IncomingInput, StoredInput, UploadSettings
from tuneship.controller.machine import Phase
from tuneship.controller.scheduler import Scheduler
from tuneship.controller.state import EventView, PipelineView, StateStore
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc, stage_pb2, workers_pb2

SERVICE_NAME = "tuneship.v1.PipelineService"
MAX_SPEC_BYTES = 256 * 1024
"""The largest spec Submit takes: a spec names its data, so real ones are a few KB."""
add_to_server = pipeline_pb2_grpc.add_PipelineServiceServicer_to_server

log = logging.getLogger("tuneship.controller")

InputUploader = Callable[[PipelineSpec], dict[str, Artifact]]
ChatForwarder = Callable[[workers_pb2.ChatRequest], Iterator[workers_pb2.ChatChunk]]

_PHASES = {
    Phase.PENDING: pipeline_pb2.PENDING,
    Phase.RUNNING: pipeline_pb2.RUNNING,
    Phase.SUCCEEDED: pipeline_pb2.SUCCEEDED,
    Phase.FAILED: pipeline_pb2.FAILED,
    Phase.CANCELLED: pipeline_pb2.CANCELLED,
}
_FROM_PROTO = {v: k for k, v in _PHASES.items()}


def _not_waiting(pipeline_id: str, stage: str) -> str:
    return ""


def pipeline_to_proto(
    view: PipelineView, waiting: Callable[[str, str], str] = _not_waiting
) -> pipeline_pb2.Pipeline:
    """``waiting(pipeline_id, stage)`` says why a running stage has no worker yet."""
    stages = [
        pipeline_pb2.StageStatus(
            stage=s.name, phase=_PHASES[s.phase], task_id=s.task_id, attempts=s.attempts,
            error=s.error, started=s.started, finished=s.finished,
            outputs={k: artifact_to_proto(Artifact(**v)) for k, v in s.outputs.items()},
            summary_json=json.dumps(s.summary, sort_keys=True),
            waiting=waiting(view.id, s.name) if s.phase is Phase.RUNNING else "",
        )
        for s in view.stages
    ]  # fmt: skip
    return pipeline_pb2.Pipeline(
        id=view.id, name=view.name, phase=_PHASES[view.phase], spec_json=view.spec_json,
        stages=stages, priority=view.priority, created=view.created, updated=view.updated,
        error=view.error, labels=view.labels,
    )  # fmt: skip


def pipeline_event_to_proto(view: EventView, phase: Phase) -> pipeline_pb2.PipelineEvent:
    """A recorded event as ``Watch`` streams it: a stage event, or a transition whose
    text is the ``message`` (with the stage's summary when it succeeded)."""
    payload = view.payload
    recorded = payload.get("phase")  # transitions carry the phase they led to
    message = pipeline_pb2.PipelineEvent(
        pipeline_id=view.pipeline_id,
        seq=view.seq,
        phase=_PHASES[Phase(recorded) if recorded else phase],
    )
    event = event_from_record(view.stage, view.kind, payload)
    if event is not None:
        stage_event = event_to_proto(event, stage=view.stage, seq=view.seq, at=view.time)
    else:
        message.message = payload.get("message", "")
        stage_event = stage_pb2.StageEvent(stage=view.stage, seq=view.seq, time=view.time)
        if "summary" in payload:
            stage_event.result.CopyFrom(
                stage_pb2.StageResult(summary_json=json.dumps(payload["summary"], sort_keys=True))
            )
    message.stage_event.CopyFrom(stage_event)
    return message


@runtime_checkable
class InputReceiver(Protocol):
    """An ``InputUploader`` that also takes uploads from clients (``inputs.StoreInputs``)."""

    settings: UploadSettings

    def find(self, incoming: IncomingInput) -> StoredInput | None: ...

    def receive(
        self, incoming: IncomingInput, pieces: Iterator[tuple[str, bytes]]
    ) -> StoredInput: ...


def incoming_from_proto(header: pipeline_pb2.InputHeader) -> IncomingInput:
    files = tuple(FileEntry(f.name, f.size, f.sha256) for f in header.files)
    return IncomingInput(header.kind, header.field, header.name or header.field, files)


def pipeline_id_of(request: Any) -> str:
    """The pipeline ``id`` of a Get/Watch/Cancel/Retry/Delete/Chat request. An empty id
    is the caller's mistake (a variable left unset), not an unknown pipeline: it is
    ``InvalidInput`` naming the field, where ``NOT_FOUND`` would suggest a typo."""
    if not request.id.strip():
        raise InvalidInput(
            "no pipeline id: id is empty", where=f"{request.DESCRIPTOR.name}.id",
            hint="the id `tuneship submit` printed; `tuneship list` shows ids",
        )  # fmt: skip
    return str(request.id)


def file_to_proto(stored: StoredFile) -> pipeline_pb2.ArtifactFile:
    return pipeline_pb2.ArtifactFile(
        stage=stored.stage, output=stored.output, path=stored.path, size=stored.size,
        sha256=stored.sha256,
    )  # fmt: skip


def stored_to_proto(stored: StoredInput | None, max_bytes: int) -> pipeline_pb2.UploadInputResponse:
    if stored is None:
        return pipeline_pb2.UploadInputResponse(max_upload_bytes=max_bytes)
    return pipeline_pb2.UploadInputResponse(
        location=stored.location, manifest=artifact_to_proto(stored.artifact),
        already_stored=stored.already_stored, max_upload_bytes=max_bytes,
    )  # fmt: skip


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    """Submit, inspect, watch, cancel, retry and delete pipelines; chat with the result."""

    def __init__(
        self,
        state: StateStore,
        scheduler: Scheduler,
        upload_inputs: InputUploader,
        chat: ChatForwarder | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.state = state
        self.scheduler = scheduler
        self.upload_inputs = upload_inputs
        self.forward_chat = chat
        self.store = store
        """Where the pipelines' outputs are committed (None: files cannot be read here)."""

    def _validate(self, request: pipeline_pb2.SubmitRequest, where: str) -> PipelineSpec:
        if not request.spec_yaml.strip():
            raise InvalidInput(
                "spec_yaml is empty", where=f"{where}.spec_yaml",
                hint="send the text of a spec file (`tuneship submit SPEC` does)",
            )  # fmt: skip
        size = len(request.spec_yaml.encode())
        if size > MAX_SPEC_BYTES:
            raise InvalidInput(
                f"the spec is {size:,} bytes; the most a spec may be is {MAX_SPEC_BYTES:,}",
                where=f"{where}.spec_yaml",
                hint="a spec names its data (files, s3:// URIs); it does not contain it",
            )
        return parse_spec(request.spec_yaml, source=where)

    def _create(self, spec: PipelineSpec, priority: int) -> PipelineView:
        inputs = {k: vars(v) for k, v in self.upload_inputs(spec).items()}
        pipeline_id = self.state.create(
            spec.metadata.name, spec.model_dump_json(), priority, spec.metadata.labels, inputs
        )
        return self.state.get(pipeline_id)

    def Submit(self, request: pipeline_pb2.SubmitRequest, context: Any) -> pipeline_pb2.Pipeline:
        spec = self._validate(request, "spec")
        return pipeline_to_proto(self._create(spec, request.priority))

    def SubmitBatch(
        self, request: pipeline_pb2.SubmitBatchRequest, context: Any
    ) -> pipeline_pb2.SubmitBatchResponse:
        if not request.pipelines:
            raise InvalidInput(
                "no specs: the batch is empty", where="SubmitBatchRequest.pipelines",
                hint="send one SubmitRequest per pipeline (`tuneship submit SPEC...`)",
            )  # fmt: skip
        # Validate every spec before creating any: a batch is accepted whole or not at all.
        specs = [self._validate(r, f"pipelines[{i}]") for i, r in enumerate(request.pipelines)]
        views = [self._create(s, r.priority) for s, r in zip(specs, request.pipelines, strict=True)]
        return pipeline_pb2.SubmitBatchResponse(pipelines=[pipeline_to_proto(v) for v in views])

    def Get(self, request: pipeline_pb2.GetRequest, context: Any) -> pipeline_pb2.Pipeline:
        return pipeline_to_proto(self.state.get(pipeline_id_of(request)), self.scheduler.waiting)

    def List(self, request: pipeline_pb2.ListRequest, context: Any) -> pipeline_pb2.ListResponse:
        try:
            offset = int(request.page_token or "0")
        except ValueError:
            offset = -1
        if offset < 0:
            raise InvalidInput(
                "page_token is not one this server issued", where="ListRequest.page_token",
                hint="pass the next_page_token of the previous page, or none for the first",
            )  # fmt: skip
        if request.page_size < 0:
            raise InvalidInput(
                f"page_size is {request.page_size}", where="ListRequest.page_size",
                hint="a positive number of pipelines per page, or 0 for the default (50)",
            )  # fmt: skip
        if request.phase not in _FROM_PROTO and request.phase != pipeline_pb2.PHASE_UNSPECIFIED:
            raise InvalidInput(
                f"unknown phase {request.phase}", where="ListRequest.phase",
                hint="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED; unset for all",
            )  # fmt: skip
        phase = _FROM_PROTO.get(request.phase)
        views, more = self.state.list_pipelines(
            phase, request.name_prefix, dict(request.labels), offset, request.page_size or 50
        )
        next_token = str(offset + len(views)) if more else ""
        pipelines = [pipeline_to_proto(v, self.scheduler.waiting) for v in views]
        for pipeline in pipelines:
            pipeline.ClearField("spec_json")  # pages stay small; Get has the spec
        return pipeline_pb2.ListResponse(pipelines=pipelines, next_page_token=next_token)

    def Watch(
        self, request: pipeline_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[pipeline_pb2.PipelineEvent]:
        pipeline_id = pipeline_id_of(request)
        seq = request.after_seq
        if seq < 0:
            raise InvalidInput(
                f"after_seq is {seq}", where="WatchRequest.after_seq",
                hint="0 replays every event; N replays those after event N",
            )  # fmt: skip
        self.state.get(pipeline_id)  # NotFound before streaming anything
        while context.is_active():
            # Phase and driver first, events second: when the pipeline is seen finished
            # with no driver left, the events read next include its very last one.
            view = self.state.get(pipeline_id)
            settled = view.phase.terminal and not self.scheduler_busy(pipeline_id)
            events = self.state.events(pipeline_id, after_seq=seq)
            for event in events:
                yield pipeline_event_to_proto(event, view.phase)
                seq = event.seq
            if settled and not events:
                return
            if not events:
                self.state.wait_for_change(1.0)

    def scheduler_busy(self, pipeline_id: str) -> bool:
        return any(pid == pipeline_id for pid, _ in list(self.scheduler._active))

    def Cancel(
        self, request: pipeline_pb2.CancelPipelineRequest, context: Any
    ) -> pipeline_pb2.Pipeline:
        pipeline_id = pipeline_id_of(request)
        self.scheduler.cancel(pipeline_id)
        return pipeline_to_proto(self.state.get(pipeline_id), self.scheduler.waiting)

    def Retry(self, request: pipeline_pb2.RetryRequest, context: Any) -> pipeline_pb2.Pipeline:
        pipeline_id = pipeline_id_of(request)
        self.scheduler.retry_pipeline(pipeline_id)
        return pipeline_to_proto(self.state.get(pipeline_id), self.scheduler.waiting)

    def Delete(
        self, request: pipeline_pb2.DeleteRequest, context: Any
    ) -> pipeline_pb2.DeleteResponse:
        view = self.state.get(pipeline_id_of(request))
        if request.purge_artifacts:
            # Committed outputs can be reused by other pipelines through the cache, so a
            # pipeline's files are not its alone to remove.
            raise FailedPrecondition(
                "purging artifacts with the pipeline is not supported",
                where="DeleteRequest.purge_artifacts",
                hint="delete the record only; remove store files with `tuneship store`",
            )
        if not view.phase.terminal:
            raise FailedPrecondition(
                f"pipeline {request.id} is {view.phase.value}", hint="cancel it first, then delete"
            )
        self.state.delete(request.id)
        return pipeline_pb2.DeleteResponse()

    def Chat(
        self, request: pipeline_pb2.PipelineChatRequest, context: Any
    ) -> Iterator[workers_pb2.ChatChunk]:
        view = self.state.get(pipeline_id_of(request))
        publish = view.stage("publish")
        model = publish.summary.get("model")
        if publish.phase is not Phase.SUCCEEDED or not model:
            raise FailedPrecondition(
                f"pipeline {request.id} has not published a model yet (publish is "
                f"{publish.phase.value})",
                hint="wait for the pipeline to succeed (`tuneship watch ID`)",
            )
        if self.forward_chat is None:
            raise NotFound("this controller has no serving service configured")
        forwarded = workers_pb2.ChatRequest(
            model=str(model), messages=request.messages, options=request.options
        )
        yield from self.forward_chat(forwarded)

    def _receiver(self, context: grpc.ServicerContext) -> InputReceiver:
        if isinstance(self.upload_inputs, InputReceiver):
            return self.upload_inputs
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "this controller takes no uploads; put inputs in the store with "
            "`tuneship store put` and name them store:KEY",
        )
        raise AssertionError("context.abort returns only by raising")

    def FindInput(
        self, request: pipeline_pb2.InputHeader, context: grpc.ServicerContext
    ) -> pipeline_pb2.UploadInputResponse:
        receiver = self._receiver(context)
        found = receiver.find(incoming_from_proto(request))
        return stored_to_proto(found, receiver.settings.max_bytes)

    def UploadInput(
        self, request_iterator: Iterator[pipeline_pb2.UploadChunk], context: grpc.ServicerContext
    ) -> pipeline_pb2.UploadInputResponse:
        receiver = self._receiver(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidInput(
                "the first chunk of an upload carries no header", where="UploadChunk.header"
            )
        rest = ((chunk.path, chunk.data) for chunk in request_iterator)
        # A client that goes away mid-upload raises RpcError here: nothing is committed.
        stored = receiver.receive(
            incoming_from_proto(first.header), chain([(first.path, first.data)], rest)
        )
        return stored_to_proto(stored, receiver.settings.max_bytes)

    def ListArtifacts(
        self, request: pipeline_pb2.ListArtifactsRequest, context: Any
    ) -> pipeline_pb2.ListArtifactsResponse:
        view = self.state.get(pipeline_id_of(request))
        files = pipeline_files(require_store(self.store), view)
        return pipeline_pb2.ListArtifactsResponse(files=[file_to_proto(f) for f in files])

    def ReadArtifact(
        self, request: pipeline_pb2.ReadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[pipeline_pb2.ArtifactChunk]:
        view = self.state.get(pipeline_id_of(request))
        store = require_store(self.store)
        stored = find_file(store, view, request.stage, request.output, request.path)
        first = True
        for piece in read_verified(store, stored, request.offset):
            chunk = pipeline_pb2.ArtifactChunk(data=piece)
            if first:
                chunk.file.CopyFrom(file_to_proto(stored))
                first = False
            yield chunk
        if first:  # an empty file: its listing still comes
            yield pipeline_pb2.ArtifactChunk(file=file_to_proto(stored))
