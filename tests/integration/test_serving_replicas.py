"""Several serving replicas sharing one store, each with its own Ollama.

Every replica is a real ``ServingService`` on loopback gRPC over its own Ollama test
server; they share one local directory store, as pods of the serving Deployment share
MinIO. A publish reaches every replica, a new replica has every current model before
its health says SERVING, a chat routed to a replica that has not synced yet succeeds,
a broken record is skipped, and a delete reaches every replica.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuneship.common import layout
from tuneship.common.codec import job_to_proto, outcome_from_proto
from tuneship.common.errors import Unavailable
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.common.spec import PipelineSpec
from tuneship.common.stagework import StageContext, artifact_of
from tuneship.common.store import ArtifactStore, LocalStore
from tuneship.common.store.commit import commit_stage
from tuneship.common.toolchain import Toolchain
from tuneship.common.wire import Server
from tuneship.serving import LlamaServerBackend, OllamaBackend
from tuneship.serving.replicas import Outcome, ReplicaSync, start_replica_sync
from tuneship.serving.servicer import serving_service
from tuneship.testing.gguf_files import write_gguf
from tuneship.testing.ollama import OllamaTestServer
from tuneship.testing.stores import FaultyStore
from tuneship.v1 import workers_pb2, workers_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Replica:
    """One serving pod: its Ollama, the backend over it, the sync and the gRPC server."""

    ollama: OllamaTestServer
    backend: OllamaBackend
    sync: ReplicaSync
    server: Server
    channel: grpc.Channel

    @property
    def stub(self) -> workers_pb2_grpc.ServingServiceStub:
        return workers_pb2_grpc.ServingServiceStub(self.channel)

    def models(self) -> set[str]:
        return set(self.ollama.models)

    def health(self) -> int:
        check = health_pb2_grpc.HealthStub(self.channel).Check
        return int(check(health_pb2.HealthCheckRequest(), timeout=5).status)

    def publish(self, pipeline: str, name: str, gguf: Artifact) -> StageOutcome:
        spec = PipelineSpec.model_validate({
            "apiVersion": "tuneship/v1", "metadata": {"name": pipeline},
            "model": {"base": "store:x"}, "dataset": {"train": "store:y"},
            "serve": {"name": name, "smoke_prompts": ["Hello"]},
        })  # fmt: skip
        job = StageJob(f"{pipeline}.publish", pipeline, spec.model_dump_json(), {"gguf": gguf}, "")
        events = list(self.stub.Publish(job_to_proto(job), timeout=30))
        return outcome_from_proto(events[-1].result)

    def chat(self, model: str) -> str:
        request = workers_pb2.ChatRequest(
            model=model, messages=[workers_pb2.ChatMessage(role="user", content="Hi")]
        )
        return "".join(chunk.content for chunk in self.stub.Chat(request, timeout=30))

    def close(self) -> None:
        self.sync.stop()
        self.channel.close()
        self.server.stop(0.5)
        self.backend.close()
        self.ollama.stop()


StartReplica = Callable[..., Replica]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def start_replica(store: LocalStore, tmp_path: Path) -> Iterator[StartReplica]:
    """Starts a replica the way the entry point does: the first sync, then the server."""
    started: list[Replica] = []

    def start(*, sync_s: float | None = None, via: ArtifactStore | None = None) -> Replica:
        ollama = OllamaTestServer().start()
        backend = OllamaBackend(ollama.url, retries=1, backoff_s=0.01)
        ctx = StageContext(via or store, tmp_path / f"work-{len(started)}")
        sync = start_replica_sync(ctx, backend, sync_s)
        server = serving_service(ctx, backend, replicas=sync).start()
        replica = Replica(ollama, backend, sync, server, grpc.insecure_channel(server.address))
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.close()


def export(store: LocalStore, tmp_path: Path, pipeline: str, context: int = 512) -> Artifact:
    """A committed export stage holding one GGUF (``context`` makes its bytes differ)."""
    out = tmp_path / f"export-{pipeline}-{context}"
    out.mkdir()
    write_gguf(out / "model-f16.gguf", context_length=context)
    rows = [{"quant_type": "f16", "file": "model-f16.gguf", "baseline": True}]
    (out / "report.json").write_text(json.dumps({"recommended": "f16", "rows": rows}))
    manifest = commit_stage(
        store, out, pipeline=pipeline, stage="export", attempt=f"{pipeline}.export.{context}"
    )
    return artifact_of(manifest)


def test_a_publish_on_one_replica_reaches_another_at_its_next_sync(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica()
    outcome = a.publish("p1", "pirate", export(store, tmp_path, "p1"))
    version = outcome.summary["version"]
    assert "pirate:latest" not in b.models()

    report = b.sync.sync_once()

    assert report.outcomes == {"pirate": Outcome.PUBLISHED}
    assert {version, "pirate:latest"} <= b.models()
    assert b.ollama.models[version].digest == a.ollama.models[version].digest
    assert b.ollama.models[version].parameters == a.ollama.models[version].parameters
    assert b.chat("pirate") == "Ahoy! I am a test model."
    assert b.sync.sync_once().outcomes == {"pirate": Outcome.UNCHANGED}  # nothing done twice
    assert b.ollama.chats[-1]["model"] == "pirate:latest"
    assert not b.ollama.chats[:-1]  # the re-publish asked no smoke prompt


def test_a_new_version_moves_latest_on_every_replica(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica()
    first = a.publish("p1", "pirate", export(store, tmp_path, "p1", 512))
    b.sync.sync_once()
    second = a.publish("p2", "pirate", export(store, tmp_path, "p2", 1024))

    b.sync.sync_once()

    new = second.summary["version"]
    assert {first.summary["version"], new, "pirate:latest"} <= b.models()
    assert b.ollama.models["pirate:latest"].digest == a.ollama.models[new].digest


def test_the_periodic_sync_brings_a_publish_without_being_asked(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica(sync_s=0.2)
    a.publish("p1", "parrot", export(store, tmp_path, "p1"))
    deadline = time.monotonic() + 10
    while "parrot:latest" not in b.models() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "parrot:latest" in b.models()
    assert not b.ollama.chats  # synced by the thread, not by a chat


def test_a_new_replica_has_every_model_before_it_reports_serving(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a = start_replica()
    pirate = a.publish("p1", "pirate", export(store, tmp_path, "p1", 512)).summary["version"]
    parrot = a.publish("p2", "parrot", export(store, tmp_path, "p2", 1024)).summary["version"]
    ollama = OllamaTestServer().start()
    with OllamaBackend(ollama.url) as backend:
        ctx = StageContext(store, tmp_path / "work-c")
        sync = start_replica_sync(ctx, backend, None)
        try:
            # The entry point starts the server (which reports SERVING at once) only now.
            assert {pirate, parrot, "pirate:latest", "parrot:latest"} <= set(ollama.models)
            server = serving_service(ctx, backend, replicas=sync).start()
            channel = grpc.insecure_channel(server.address)
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            listed = workers_pb2_grpc.ServingServiceStub(channel).ListModels(
                workers_pb2.ListModelsRequest()
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert {m.name for m in listed.models} == set(ollama.models)
            channel.close()
            server.stop(0.5)
        finally:
            sync.stop()
            ollama.stop()


def test_a_chat_on_a_replica_that_has_not_synced_yet_succeeds(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica()
    a.publish("p1", "pirate", export(store, tmp_path, "p1"))
    assert not b.models()

    assert b.chat("pirate") == "Ahoy! I am a test model."
    assert "pirate:latest" in b.models()
    with pytest.raises(grpc.RpcError) as caught:
        b.chat("nobody")  # no record: the backend's NotFound, as before
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_broken_records_are_skipped_and_the_replica_still_becomes_ready(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a = start_replica()
    a.publish("p1", "good", export(store, tmp_path, "p1", 512))
    missing = a.publish("p2", "missing", export(store, tmp_path, "p2", 1024))
    corrupt = a.publish("p3", "corrupt", export(store, tmp_path, "p3", 2048))
    store.put_bytes(layout.served_model("garbled"), b'{"kind": "served-model", "format')
    gguf_key = {n: json.loads(store.get_bytes(layout.served_model(n)))["gguf"]["key"]
                for n in ("missing", "corrupt")}  # fmt: skip
    store.delete(gguf_key["missing"])
    (store.root / gguf_key["corrupt"]).write_bytes(b"GGUF but not the published bytes")
    counting = FaultyStore(store)

    c = start_replica(via=counting)

    assert c.health() == health_pb2.HealthCheckResponse.SERVING
    assert "good:latest" in c.models()
    assert not {"missing:latest", "corrupt:latest", "garbled:latest"} & c.models()
    report = c.sync.sync_once()
    assert report.outcomes["good"] is Outcome.UNCHANGED
    assert {n: report.outcomes[n] for n in ("missing", "corrupt", "garbled")} == dict.fromkeys(
        ("missing", "corrupt", "garbled"), Outcome.FAILED
    )
    assert "sha256" in report.problems["corrupt"]
    assert "no object" in report.problems["missing"]
    # A corrupt GGUF is downloaded once per revision, not again at every sync.
    assert counting.operations("get_file").count(gguf_key["corrupt"]) == 1
    with pytest.raises(grpc.RpcError) as caught:
        c.chat("corrupt")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "could not be re-published" in str(caught.value.details())
    # Published again, the model gets a new revision and is tried again.
    a.publish("p3b", "corrupt", export(store, tmp_path, "p3b", 4096))
    c.sync.sync_once()
    assert "corrupt:latest" in c.models()
    assert missing.summary["version"] not in c.models()
    assert corrupt.summary["model"] == "corrupt:latest"
    # Deleting the model whose record is unreadable replaces that record by a tombstone.
    c.stub.DeleteModel(workers_pb2.DeleteModelRequest(name="garbled"), timeout=10)
    assert c.sync.sync_once().outcomes["garbled"] is Outcome.UNCHANGED


def test_a_sync_leaves_alone_a_model_this_replica_is_publishing(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica()
    a.publish("p1", "pirate", export(store, tmp_path, "p1"))
    with b.sync.publishing("pirate"):
        assert b.sync.sync_once().outcomes == {"pirate": Outcome.BUSY}
    assert b.sync.sync_once().outcomes == {"pirate": Outcome.PUBLISHED}


def test_a_delete_reaches_every_replica_and_replicas_started_later(
    start_replica: StartReplica, store: LocalStore, tmp_path: Path
) -> None:
    a, b = start_replica(), start_replica()
    version = a.publish("p1", "pirate", export(store, tmp_path, "p1")).summary["version"]
    a.publish("p2", "parrot", export(store, tmp_path, "p2", 1024))
    b.sync.sync_once()
    assert {version, "pirate:latest", "parrot:latest"} <= b.models()

    a.stub.DeleteModel(workers_pb2.DeleteModelRequest(name="pirate"), timeout=10)

    assert not {version, "pirate:latest"} & a.models()
    assert b.sync.sync_once().outcomes["pirate"] is Outcome.REMOVED
    assert not {version, "pirate:latest"} & b.models()
    assert "parrot:latest" in b.models()
    later = start_replica()
    assert "pirate:latest" not in later.models() and "parrot:latest" in later.models()
    with pytest.raises(grpc.RpcError) as caught:
        later.chat("pirate")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_replica_whose_store_is_down_at_start_does_not_report_ready(
    store: LocalStore, tmp_path: Path
) -> None:
    down = FaultyStore(store, fail=lambda operation, key: operation == "list")
    with (
        OllamaTestServer() as ollama,
        OllamaBackend(ollama.url) as backend,
        pytest.raises(Unavailable, match="injected failure"),
    ):
        start_replica_sync(StageContext(down, tmp_path / "work"), backend, None)


def test_a_llama_server_replica_serves_a_model_published_elsewhere(
    start_replica: StartReplica,
    store: LocalStore,
    tmp_path: Path,
    toolchain: Toolchain,
    tiny_chatml_gguf: Path,
) -> None:
    out = tmp_path / "export-real"
    out.mkdir()
    shutil.copyfile(tiny_chatml_gguf, out / "model-f16.gguf")
    rows = [{"quant_type": "f16", "file": "model-f16.gguf", "baseline": True}]
    (out / "report.json").write_text(json.dumps({"recommended": "f16", "rows": rows}))
    manifest = commit_stage(store, out, pipeline="p1", stage="export", attempt="p1.export.1")
    version = start_replica().publish("p1", "pirate", artifact_of(manifest)).summary["version"]

    ctx = StageContext(store, tmp_path / "work-llama")
    with LlamaServerBackend(toolchain, tmp_path / "work-llama" / "serving") as backend:
        sync = start_replica_sync(ctx, backend, None)
        assert {m.name for m in backend.list()} == {version, "pirate:latest"}
        answer = backend.chat("pirate", [{"role": "user", "content": "Hi"}], num_predict=4)
        assert answer.text() and answer.done_reason == "length"
        # The downloaded GGUF is not kept beside the backend's own copy (a hard link).
        assert not list(ctx.work_root.glob("replicas/**/*.gguf"))
        sync.stop()
