"""A small Python client for the controller's ``PipelineService``.

    client = PipelineClient("127.0.0.1:50051")   # or ("host:50051", token=..., ca=...)
    pipeline = client.submit(Path("spec.yaml"))
    for event in client.watch(pipeline.id):
        print(event.text)
    print("".join(client.chat(pipeline.id, [{"role": "user", "content": "Hi"}])))
    uploaded = client.upload_input(Path("conversations.jsonl"), kind="dataset")
    print(uploaded.location)   # store:inputs/dataset/<digest>/manifest.json
    for found in client.artifacts(pipeline.id):
        print(found.name, found.size)  # export/report.md 2048, ...
    client.download(pipeline.id, "export", "report.md", Path("report.md"))

Errors come back as tuneship errors (``NotFound``, ``InvalidInput``, ...), built from
the gRPC status code, so callers handle the same types as in-process code.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tuneship.common import errors
from tuneship.common.atomic import staged_file
from tuneship.common.auth import ClientTls, Token
from tuneship.common.codec import event_from_proto, event_to_record
from tuneship.common.events import Log, Metrics, Progress
from tuneship.common.guard import dial
from tuneship.common.hashing import sha256_file
from tuneship.common.manifest import FileEntry, scan_dir
from tuneship.common.store.base import CorruptArtifact
from tuneship.common.wire import ANSWERED_KEY
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc, workers_pb2

_ERRORS: dict[grpc.StatusCode, type[errors.TuneshipError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Busy,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.DATA_LOSS: CorruptArtifact,
}


_HINT = "\n  hint: "
"""How ``TuneshipError.render`` joins a hint to its message."""


def _error(exc: grpc.RpcError, address: str, tls: bool = False) -> errors.TuneshipError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = _ERRORS.get(code, errors.TuneshipError)
    if code is grpc.StatusCode.UNAVAILABLE and "handshake" in details.lower():
        hint = "check the CA (--ca/TUNESHIP_CA) and client certificate (--cert/--key)"
        return kind(f"TLS with the controller at {address} failed: {details}", hint=hint)
    if code is grpc.StatusCode.UNAVAILABLE and not _answered(exc):
        hint = "start it (`tuneship serve controller`) or check --controller"
        if tls:  # a refused client certificate looks like a closed socket
            hint += "; over TLS, check --ca and give --cert/--key if it wants a client certificate"
        return kind(f"controller at {address} is not reachable: {details}", hint=hint)
    # The server sent its error rendered: the message, then its hint after _HINT. Split
    # again, pages can show the hint apart; render() gives the same text as before.
    message, _, hint = (details or code.name).partition(_HINT)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return kind(message, where=code.name, hint=hint or None)
    return kind(message, hint=hint or None)


def _answered(exc: grpc.RpcError) -> bool:
    """Whether the controller itself sent this error (vs. no connection at all)."""
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:
        return False
    return any(key == ANSWERED_KEY for key, _ in metadata)


PHASES = {v: k.lower() for k, v in pipeline_pb2.Phase.items()}
UPLOAD_CHUNK = 1 << 20
"""Bytes of a file per ``UploadChunk`` (well under the servers' 64 MiB message limit)."""

FileStarted = Callable[[int, int, FileEntry], None]
"""``(index from 1, file count, file)``, called as each file of an upload starts."""


@dataclass(frozen=True)
class StageInfo:
    name: str
    phase: str
    attempts: int
    error: str
    outputs: dict[str, str]
    summary: dict[str, Any]
    started: float = 0.0
    finished: float = 0.0
    waiting: str = ""
    """Why a running stage has no worker yet ("queued: Kueue has not admitted ...")."""

    @property
    def shown_phase(self) -> str:
        """The phase as people read it: a running stage still waiting for its worker
        (a Kueue queue, no node for its pod) shows as ``queued`` or ``waiting``."""
        if self.phase != "running" or not self.waiting:
            return self.phase
        return "queued" if self.waiting.startswith("queued") else "waiting"


@dataclass(frozen=True)
class PipelineInfo:
    """A pipeline as the controller reports it."""

    id: str
    name: str
    phase: str
    error: str
    created: float
    updated: float
    stages: list[StageInfo] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def stage(self, name: str) -> StageInfo:
        return next(s for s in self.stages if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "phase": self.phase, "error": self.error,
            "created": self.created, "updated": self.updated,
            "stages": [vars(s) for s in self.stages], "labels": dict(self.labels),
        }  # fmt: skip


@dataclass(frozen=True)
class WatchEvent:
    """One event of a pipeline: a transition, progress, metrics or a log line."""

    seq: int
    phase: str
    stage: str
    kind: str
    text: str
    data: dict[str, Any]
    step: int | None = None
    """The training step a ``metrics`` event was measured at, when the stage said."""


class _ServerStream:
    """The messages of one server-streaming call, its errors as tuneship errors;
    ``cancel()`` (from any thread) ends the iteration quietly."""

    def __init__(self, call: Any, address: str, tls: bool) -> None:
        self._call = call
        self._address = address
        self._tls = tls
        self._cancelled = False

    def _messages(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
                return
            raise _error(exc, self._address, self._tls) from exc

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


class WatchStream(_ServerStream):
    """The events of one ``Watch`` call, in order; ``cancel()`` ends the iteration
    quietly, e.g. when the reader of a live view goes away."""

    def __iter__(self) -> Iterator[WatchEvent]:
        for message in self._messages():
            yield watch_event(message)


@dataclass(frozen=True)
class ArtifactInfo:
    """One committed file of a pipeline's stage output."""

    stage: str
    output: str
    path: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        """How people name it: ``export/report.md`` (``stage/output/path`` when the
        output is not the stage's own)."""
        middle = "" if self.output == self.stage else f"{self.output}/"
        return f"{self.stage}/{middle}{self.path}"


def artifact_info(message: pipeline_pb2.ArtifactFile) -> ArtifactInfo:
    return ArtifactInfo(message.stage, message.output, message.path, message.size,
                        message.sha256)  # fmt: skip


class ArtifactDownload(_ServerStream):
    """One file as ``ReadArtifact`` streams it. Made by ``PipelineClient.read_artifact``,
    which waits for the first piece, so ``file`` (its size and sha256) is known and a
    missing file has raised before any byte; iterating yields the bytes, ``cancel()``
    (from any thread) stops the transfer."""

    def __init__(self, call: Any, address: str, tls: bool) -> None:
        super().__init__(call, address, tls)
        self._pieces = self._messages()
        first = next(self._pieces, None)
        if first is None:
            raise errors.Unavailable(f"the controller at {address} ended the file before it began")
        self._first_data = first.data
        self.file = artifact_info(first.file)

    def __iter__(self) -> Iterator[bytes]:
        if self._first_data:
            yield self._first_data
        for chunk in self._pieces:
            yield chunk.data


@dataclass(frozen=True)
class UploadedInput:
    """An input stored through the controller: ``location`` (``store:KEY``) is what a
    spec names; ``already_stored`` when identical content was there and nothing was sent."""

    location: str
    key: str
    sha256: str
    size: int
    already_stored: bool


def _uploaded(answer: pipeline_pb2.UploadInputResponse) -> UploadedInput:
    ref = answer.manifest
    return UploadedInput(answer.location, ref.key, ref.sha256, ref.size, answer.already_stored)


def _upload_chunks(
    header: pipeline_pb2.InputHeader, path: Path, on_file: FileStarted | None
) -> Iterator[pipeline_pb2.UploadChunk]:
    """The header, then every file of the listing in order, ``UPLOAD_CHUNK`` bytes a chunk."""
    first: pipeline_pb2.InputHeader | None = header
    for index, entry in enumerate(header.files, start=1):
        if on_file is not None:
            on_file(index, len(header.files), FileEntry(entry.name, entry.size, entry.sha256))
        source = path if path.is_file() else path / entry.name
        with source.open("rb") as handle:
            piece = handle.read(UPLOAD_CHUNK)
            yield pipeline_pb2.UploadChunk(header=first, path=entry.name, data=piece)
            first = None
            while piece := handle.read(UPLOAD_CHUNK):
                yield pipeline_pb2.UploadChunk(data=piece)


def pipeline_info(message: pipeline_pb2.Pipeline) -> PipelineInfo:
    stages = [
        StageInfo(
            s.stage, PHASES[s.phase], s.attempts, s.error,
            {k: v.key for k, v in s.outputs.items()},
            json.loads(s.summary_json) if s.summary_json else {}, s.started, s.finished,
            s.waiting,
        )
        for s in message.stages
    ]  # fmt: skip
    return PipelineInfo(message.id, message.name, PHASES[message.phase], message.error,
                        message.created, message.updated, stages, dict(message.labels))  # fmt: skip


def watch_event(message: pipeline_pb2.PipelineEvent) -> WatchEvent:
    stage_event = message.stage_event
    phase = PHASES[message.phase]
    event = event_from_proto(stage_event)
    if isinstance(event, Progress):
        kind, data = event_to_record(event)
        text = f"{event.step}/{event.total} {event.unit} {event.message}".strip()
        return WatchEvent(message.seq, phase, event.stage, kind, text, data)
    if isinstance(event, Metrics):
        text = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.values.items()))
        values = dict(event.values)
        return WatchEvent(message.seq, phase, event.stage, "metrics", text, values, event.step)
    if isinstance(event, Log):
        level = {"level": event.level}
        return WatchEvent(message.seq, phase, event.stage, "log", event.message, level)
    summary: dict[str, Any] = {}
    if stage_event.WhichOneof("kind") == "result" and stage_event.result.summary_json:
        summary = {"summary": json.loads(stage_event.result.summary_json)}
    return WatchEvent(message.seq, phase, stage_event.stage, "transition", message.message, summary)


def open_channel(
    address: str, token: Token | None = None, tls: ClientTls | None = None
) -> grpc.Channel:
    """``host:port`` in the clear (a port-forward, loopback) unless ``tls`` is given;
    ``https://host[:port]`` always with TLS, checked against ``tls.ca`` or else the
    system's CAs (the chart's Ingress; port 443 default). Every call carries ``token``."""
    for scheme in ("https://", "grpcs://"):
        if address.startswith(scheme):
            target = address.removeprefix(scheme).rstrip("/")
            if ":" not in target:
                target += ":443"
            return dial(target, token=token, tls=tls or ClientTls())
    return dial(address.removeprefix("http://"), token=token, tls=tls)


class PipelineClient:
    """Talks to one controller (``host:port``, or ``https://host`` through TLS).

    ``token``: the user token sent with every call (``authorization: Bearer``).
    ``ca``: check the controller's certificate against this CA file, over TLS even for a
    plain ``host:port``; ``cert``/``key``: the client certificate for mutual TLS.
    """

    def __init__(
        self,
        address: str,
        timeout_s: float = 30.0,
        *,
        token: str | Token | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        if isinstance(token, str):
            token = Token(token)
        if (cert is None) != (key is None):
            raise errors.InvalidInput("a client certificate needs its key (and the other way "
                                      "round)", where="--cert/--key")  # fmt: skip
        tls = ClientTls(ca, cert, key) if ca is not None or cert is not None else None
        self._tls = tls is not None or "s://" in address
        self._channel = open_channel(address, token, tls)
        self._stub = pipeline_pb2_grpc.PipelineServiceStub(self._channel)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _error(exc, self.address, self._tls) from exc

    def submit(self, spec: Path | str, priority: int = 0) -> PipelineInfo:
        """Submit a spec (a path or the YAML text)."""
        text = spec.read_text(encoding="utf-8") if isinstance(spec, Path) else spec
        request = pipeline_pb2.SubmitRequest(spec_yaml=text, priority=priority)
        return pipeline_info(self._call("Submit", request))

    def submit_batch(
        self, specs: builtins.list[str], priority: int = 0
    ) -> builtins.list[PipelineInfo]:
        requests = [pipeline_pb2.SubmitRequest(spec_yaml=s, priority=priority) for s in specs]
        answer = self._call("SubmitBatch", pipeline_pb2.SubmitBatchRequest(pipelines=requests))
        return [pipeline_info(p) for p in answer.pipelines]

    def get(self, pipeline_id: str) -> PipelineInfo:
        return pipeline_info(self._call("Get", pipeline_pb2.GetRequest(id=pipeline_id)))

    def get_spec(self, pipeline_id: str) -> str:
        """The spec (JSON) a pipeline runs."""
        return str(self._call("Get", pipeline_pb2.GetRequest(id=pipeline_id)).spec_json)

    def list(self, phase: str = "", name_prefix: str = "", page_size: int = 50,
             page_token: str = "", labels: dict[str, str] | None = None,
             ) -> tuple[builtins.list[PipelineInfo], str]:  # fmt: skip
        """A page of pipelines and the token of the next page ("" at the end); ``labels``:
        only pipelines with every one of these labels."""
        request = pipeline_pb2.ListRequest(
            phase=phase.upper() if phase else "PHASE_UNSPECIFIED",
            name_prefix=name_prefix, page_size=page_size, page_token=page_token,
            labels=labels or {},
        )  # fmt: skip
        answer = self._call("List", request)
        return [pipeline_info(p) for p in answer.pipelines], answer.next_page_token

    def watch(self, pipeline_id: str, after_seq: int = 0) -> WatchStream:
        """Every event after ``after_seq`` and then live ones, until the pipeline ends."""
        request = pipeline_pb2.WatchRequest(id=pipeline_id, after_seq=after_seq)
        return WatchStream(self._stub.Watch(request), self.address, self._tls)

    def cancel(self, pipeline_id: str) -> PipelineInfo:
        return pipeline_info(
            self._call("Cancel", pipeline_pb2.CancelPipelineRequest(id=pipeline_id))
        )

    def retry(self, pipeline_id: str) -> PipelineInfo:
        return pipeline_info(self._call("Retry", pipeline_pb2.RetryRequest(id=pipeline_id)))

    def delete(self, pipeline_id: str) -> None:
        self._call("Delete", pipeline_pb2.DeleteRequest(id=pipeline_id))

    def chat(self, pipeline_id: str, messages: builtins.list[dict[str, str]],
             **options: float) -> Iterator[str]:  # fmt: skip
        """Stream the answer of the model a pipeline published."""
        for text, _final in self.chat_pieces(pipeline_id, messages, **options):
            if text:
                yield text

    def chat_pieces(self, pipeline_id: str, messages: builtins.list[dict[str, str]],
                    **options: float) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        """(text, final) pairs; the last has ``final["done_reason"]`` ("stop"/"length")."""
        request = pipeline_pb2.PipelineChatRequest(
            id=pipeline_id,
            messages=[
                workers_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages
            ],
            options=options,
        )
        try:
            for chunk in self._stub.Chat(request, timeout=300):
                final = {"done_reason": chunk.done_reason} if chunk.done else {}
                yield chunk.content, final
        except grpc.RpcError as exc:
            raise _error(exc, self.address, self._tls) from exc

    def upload_input(
        self, path: Path, kind: str, field: str = "", on_file: FileStarted | None = None
    ) -> UploadedInput:
        """Store a local model directory or dataset file through the controller, under
        the same content-addressed key as a direct upload to the store.

        Every file is hashed first; when the controller has identical content already,
        nothing is sent (``already_stored``). ``on_file`` hears of each file as it
        starts. Errors: InvalidInput (over the controller's upload limit, or a file that
        changed while it was sent), FailedPrecondition (the controller takes no uploads),
        Unavailable.
        """
        path = Path(path)
        files = scan_dir(path)
        header = pipeline_pb2.InputHeader(
            kind=kind, field=field, name=str(path),
            files=[pipeline_pb2.InputFile(name=f.name, size=f.size, sha256=f.sha256)
                   for f in files],
        )  # fmt: skip
        try:
            found = self._stub.FindInput(header, timeout=self.timeout_s)
            if found.already_stored:
                return _uploaded(found)
            # No deadline: a large model takes as long as the link needs.
            return _uploaded(self._stub.UploadInput(_upload_chunks(header, path, on_file)))
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise errors.FailedPrecondition(
                    f"the controller at {self.address} takes no uploads (UNIMPLEMENTED)",
                    hint="put the input in the store with `tuneship store put` and name it "
                    "store:KEY in the spec",
                ) from exc
            raise _error(exc, self.address, self._tls) from exc

    def artifacts(self, pipeline_id: str) -> builtins.list[ArtifactInfo]:
        """Every committed file of the pipeline's stage outputs (stage order, then path)."""
        answer = self._call("ListArtifacts", pipeline_pb2.ListArtifactsRequest(id=pipeline_id))
        return [artifact_info(f) for f in answer.files]

    def read_artifact(
        self, pipeline_id: str, stage: str, path: str, output: str = "", offset: int = 0
    ) -> ArtifactDownload:
        """Start reading one committed file from byte ``offset`` (NotFound now when
        there is no such file, InvalidInput for an offset past its end)."""
        request = pipeline_pb2.ReadArtifactRequest(
            id=pipeline_id, stage=stage, output=output, path=path, offset=offset
        )
        # No deadline: a multi-gigabyte GGUF takes as long as the link needs.
        return ArtifactDownload(self._stub.ReadArtifact(request), self.address, self._tls)

    def download(
        self, pipeline_id: str, stage: str, path: str, dest: Path, output: str = ""
    ) -> ArtifactInfo:
        """Write one committed file to ``dest``, whole or not at all: it is written
        beside ``dest`` and renamed into place once its sha256 matches the manifest's
        (CorruptArtifact otherwise)."""
        download = self.read_artifact(pipeline_id, stage, path, output)
        with staged_file(Path(dest)) as temp:
            with temp.open("wb") as writer:
                for piece in download:
                    writer.write(piece)
            actual = sha256_file(temp)
            if actual != download.file.sha256:
                raise CorruptArtifact(
                    f"{download.file.name} arrived with sha256 {actual[:12]}…, the manifest "
                    f"lists {download.file.sha256[:12]}…",
                    where=str(dest), hint="download it again",
                )  # fmt: skip
        return download.file

    def close(self) -> None:
        self._channel.close()
