"""``ServingService``: publish a committed GGUF, chat with, list and delete served models."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneship.common import layout
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.events import EventSink
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stagework import StageContext, artifact_of, parse_job_spec
from tuneship.common.store.commit import commit_stage, read_manifest
from tuneship.common.wire import StageService, StageServicer, stage_service
from tuneship.serving.backend import ServingBackend
from tuneship.serving.publish import publish
from tuneship.serving.replicas import ReplicaSync
from tuneship.serving.served_models import GgufSource
from tuneship.v1 import workers_pb2

STAGE = "publish"


def choose_gguf(export_manifest_files: list[str], report: dict[str, Any], quant: str | None) -> str:
    """The GGUF file to serve: ``serve.quant`` if set, else the report's recommendation,
    else the baseline."""
    rows = {row["quant_type"]: row["file"] for row in report.get("rows", [])}
    wanted = (
        quant
        or report.get("recommended")
        or next((r["quant_type"] for r in report.get("rows", []) if r.get("baseline")), None)
    )
    if wanted not in rows:
        raise InvalidInput(
            f"serve.quant {wanted!r} was not exported (exported: {', '.join(sorted(rows))})",
            where="serve.quant",
            hint="pick one of export.quant_types, or leave serve.quant empty",
        )
    name = Path(rows[wanted]).name
    if name not in export_manifest_files:
        raise NotFound(f"{name} is not among the committed export files", where="export")
    return name


def run_publish(
    ctx: StageContext,
    backend: ServingBackend,
    job: StageJob,
    sink: EventSink,
    replicas: ReplicaSync | None = None,
) -> StageOutcome:
    """Fetch the chosen GGUF, publish it (smoke-tested), record it for every serving
    replica, commit a record of what was served.

    Publishing is a side effect on the backend, so it is never skipped as cached.
    """
    replicas = replicas or ReplicaSync(ctx.store, backend, ctx.work_root)
    spec = parse_job_spec(job)
    model_name = spec.serve.name or spec.metadata.name
    _check_recordable(model_name)
    if spec.serve.backend not in ("auto", backend.kind):
        raise InvalidInput(
            f"serve.backend asks for {spec.serve.backend}, but this serving service "
            f"publishes to {backend.kind}",
            where="serve.backend",
            hint="use auto, or send the pipeline to a controller whose serving service matches",
        )
    export_key = job.inputs["gguf"].key if "gguf" in job.inputs else ""
    if not export_key:
        raise InvalidInput("the publish job has no 'gguf' input", where="StageRequest.inputs.gguf")
    exported = read_manifest(ctx.store, export_key)
    workdir = ctx.workdir(job, STAGE)
    report = json.loads(ctx.store.get_bytes(exported.file_key("report.json")))
    name = choose_gguf([f.name for f in exported.files], report, spec.serve.quant)
    gguf = workdir / name
    entry = exported.file(name)
    ctx.store.get_file(exported.file_key(name), gguf, sha256=entry.sha256)
    source = GgufSource(exported.file_key(name), entry.sha256, entry.size, export_key)
    with replicas.publishing(model_name):
        result = publish(spec, gguf, backend, sink)
        replicas.record_published(
            result, spec.serve, source, {"pipeline": job.pipeline, "task_id": job.task_id}
        )
    record = {**asdict(result), "gguf": name, "export": export_key}
    with tempfile.TemporaryDirectory(dir=workdir) as staging:
        (Path(staging) / "publish.json").write_text(json.dumps(record, indent=2, default=str))
        manifest = commit_stage(
            ctx.store, Path(staging), pipeline=job.pipeline, stage=STAGE, attempt=job.task_id,
            inputs=[exported], spec_section={"serve": spec.serve.model_dump(mode="json")},
            labels={"model": result.latest or result.model}, events=sink,
        )  # fmt: skip
    gguf.unlink(missing_ok=True)
    summary = {
        "model": result.latest or result.model, "version": result.model, "gguf": name,
        "backend": result.backend, "publish_to_first_token_s": result.publish_to_first_token_s,
        "smoke": [asdict(s) for s in result.smoke],
    }  # fmt: skip
    return StageOutcome({STAGE: artifact_of(manifest)}, summary)


def _check_recordable(name: str) -> None:
    """Refuse, before publishing, a model name that cannot key a served-model record."""
    try:
        layout.served_model(name)
    except InvalidInput as exc:
        raise InvalidInput(
            f"model name {name!r} cannot be served by every replica: {exc.message}",
            where="serve.name", hint=exc.hint,
        ) from exc  # fmt: skip


class ServingRpcs:
    """The serving service's own RPCs, over one backend and the replica sync.

    A chat for a model the backend lacks syncs that model from the store first; a
    delete of the recorded model removes it from every replica (``ReplicaSync.delete``).
    """

    def __init__(self, backend: ServingBackend, replicas: ReplicaSync) -> None:
        self.backend = backend
        self.replicas = replicas

    def Chat(
        self, request: workers_pb2.ChatRequest, context: Any
    ) -> Iterator[workers_pb2.ChatChunk]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if not messages:
            raise InvalidInput("a chat needs at least one message", where="ChatRequest.messages")
        # Options travel as doubles; integral ones (num_predict, seed) go back to ints.
        options = {k: int(v) if float(v).is_integer() else v for k, v in request.options.items()}
        self.replicas.ensure(request.model)
        stream = self.backend.chat(request.model, messages, **options)
        for piece in stream:
            yield workers_pb2.ChatChunk(content=piece)
        yield workers_pb2.ChatChunk(done=True, done_reason=stream.done_reason or "stop")

    def ListModels(self, request: Any, context: Any) -> workers_pb2.ListModelsResponse:
        models = [
            workers_pb2.ServedModel(name=m.name, digest=m.digest, size=m.size)
            for m in self.backend.list()
        ]
        return workers_pb2.ListModelsResponse(models=models)

    def DeleteModel(
        self, request: workers_pb2.DeleteModelRequest, context: Any
    ) -> workers_pb2.DeleteModelResponse:
        self.replicas.delete(request.name)
        return workers_pb2.DeleteModelResponse()


def serving_service(
    ctx: StageContext,
    backend: ServingBackend,
    capacity: int = 1,
    replicas: ReplicaSync | None = None,
) -> StageService:
    """The stage's gRPC service, ready to start.

    ``replicas`` comes from ``start_replica_sync`` (called before the server starts, so
    that health reports SERVING only once every recorded model is here). Without it,
    publishes and deletes are still recorded and chats still sync a missing model, but
    nothing syncs at start or periodically.
    """
    replicas = replicas or ReplicaSync(ctx.store, backend, ctx.work_root)
    stage = StageServicer(
        STAGE, lambda job, sink: run_publish(ctx, backend, job, sink, replicas), capacity
    )
    rpcs = ServingRpcs(backend, replicas)
    extra: dict[str, Any] = {
        "Chat": rpcs.Chat,
        "ListModels": rpcs.ListModels,
        "DeleteModel": rpcs.DeleteModel,
    }
    return stage_service(stage, extra)
