"""OllamaBackend against a server that follows Ollama's documented HTTP API.

Covers: upload skipped when the blob is present, digest mismatch, create (and 400 on
a template Go cannot parse), chat streaming, delete, unknown models, an old server
version, a server that is down, and retries on transient errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from tuneship.common.events import ListSink
from tuneship.common.llama_server import free_port
from tuneship.common.spec import ServeSpec
from tuneship.serving import OllamaBackend, SmokeTestFailed, publish_model
from tuneship.serving import ollama as ollama_module
from tuneship.testing.ollama import OllamaTestServer

pytestmark = pytest.mark.integration

NO_TEMPLATE: dict = {"template": None, "system": None, "parameters": {}}


@pytest.fixture
def server() -> Iterator[OllamaTestServer]:
    with OllamaTestServer() as running:
        yield running


@pytest.fixture
def backend(server: OllamaTestServer) -> Iterator[OllamaBackend]:
    with OllamaBackend(server.url, retries=2, backoff_s=0.01) as client:
        yield client


def test_health_reads_root_and_version(backend: OllamaBackend) -> None:
    health = backend.health()
    assert (health.ok, health.version, health.renders_jinja) == (True, "0.30.0", True)


def test_upload_is_skipped_when_the_blob_is_there(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    first = backend.upload(tiny_chatml_gguf)
    second = backend.upload(tiny_chatml_gguf)
    assert first == second and first.startswith("sha256:")
    assert server.uploads == 1
    assert [m for m, p in server.requests if p == f"/api/blobs/{first}"] == ["HEAD", "POST", "HEAD"]


def test_a_digest_mismatch_is_refused(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path, monkeypatch
) -> None:
    wrong = "sha256:" + "0" * 64
    answer = httpx.post(f"{server.url}/api/blobs/{wrong}", content=b"GGUF not these bytes")
    assert answer.status_code == 400 and "digest mismatch" in answer.json()["error"]
    monkeypatch.setattr(ollama_module, "file_digest", lambda path: wrong)
    with pytest.raises(FailedPrecondition, match="rejected the upload"):
        backend.upload(tiny_chatml_gguf)
    assert server.blobs == {}


def test_create_then_show_list_copy(backend: OllamaBackend, tiny_chatml_gguf: Path) -> None:
    published = backend.publish(
        tiny_chatml_gguf, "pirate", "v1", template='{{ range .Messages }}{{ .Content }}{{ end }}',
        system="You are a pirate.", parameters={"stop": ["<|im_end|>"], "num_ctx": 2048},
    )  # fmt: skip
    assert published.name == "pirate:v1"
    assert published.system == "You are a pirate."
    assert published.parameters == {"stop": ["<|im_end|>"], "num_ctx": 2048}
    backend.copy("pirate:v1", "pirate:latest")
    assert {m.name for m in backend.list()} == {"pirate:v1", "pirate:latest"}
    assert backend.show("pirate").template == published.template


def test_create_refuses_what_ollama_refuses(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    with pytest.raises(InvalidInput, match="template"):
        backend.publish(
            tiny_chatml_gguf, "bad", "v1", template="{{ if .System }}unclosed",
            system=None, parameters={},
        )  # fmt: skip
    with pytest.raises(InvalidInput, match="parameter"):
        backend.publish(tiny_chatml_gguf, "bad", "v1", **{**NO_TEMPLATE, "parameters": {"x": 1}})
    missing = {"model": "bad:v1", "files": {"m.gguf": "sha256:" + "1" * 64}, "stream": False}
    answer = httpx.post(f"{server.url}/api/create", json=missing)
    assert answer.status_code == 400 and "not found" in answer.json()["error"]
    assert not backend.list()


def test_chat_streams_json_lines_and_reports_why_it_stopped(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    backend.publish(tiny_chatml_gguf, "pirate", "v1", **NO_TEMPLATE)
    stream = backend.chat("pirate:v1", [{"role": "user", "content": "hi"}], num_predict=64)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == server.reply
    assert (stream.done_reason, stream.tokens) == ("stop", len(pieces))
    short = backend.chat("pirate:v1", [{"role": "user", "content": "hi"}], num_predict=2)
    assert (len(list(short)), short.done_reason) == (2, "length")
    cut = backend.chat("pirate:v1", [{"role": "user", "content": "hi"}], stop=["test"])
    assert cut.text() == "Ahoy! I am a " and cut.done_reason == "stop"
    assert server.chats[-1]["keep_alive"] == "5m" and server.chats[-1]["stream"] is True


def test_delete_and_unknown_models_are_not_found(
    backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    backend.publish(tiny_chatml_gguf, "pirate", "v1", **NO_TEMPLATE)
    backend.delete("pirate:v1")
    with pytest.raises(NotFound):
        backend.show("pirate:v1")
    with pytest.raises(NotFound):
        backend.delete("pirate:v1")
    with pytest.raises(NotFound):
        list(backend.chat("nobody", [{"role": "user", "content": "hi"}]))
    with pytest.raises(NotFound):
        backend.copy("nobody", "nobody:latest")


def test_an_old_server_gets_a_generated_go_template(tiny_chatml_gguf: Path) -> None:
    with OllamaTestServer(version="0.12.3") as old, OllamaBackend(old.url) as backend:
        health = backend.health()
        assert health.ok and not health.renders_jinja
        result = publish_model(ServeSpec(), "tiny", tiny_chatml_gguf, backend, ListSink())
        assert result.template_mode == "go"
        template = old.models[result.model].template
        assert "{{ range .Messages }}" in template and "<|im_start|>assistant\n" in template
        assert old.models[result.model].parameters["stop"] == ["<|im_end|>"]
        with pytest.raises(InvalidInput, match="does not render the GGUF's Jinja"):
            publish_model(
                ServeSpec(template_mode="jinja"), "t2", tiny_chatml_gguf, backend, ListSink()
            )
    with OllamaTestServer(version="0.3.0") as ancient, OllamaBackend(ancient.url) as backend:
        health = backend.health()
        assert not health.ok and "older than" in health.detail
        with pytest.raises(FailedPrecondition):
            backend.require_healthy()


def test_a_server_that_is_down_is_unavailable(tiny_chatml_gguf: Path) -> None:
    with OllamaBackend(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01) as backend:
        assert not backend.health().ok
        with pytest.raises(Unavailable, match="after 2 tries"):
            backend.publish(tiny_chatml_gguf, "x", "v1", **NO_TEMPLATE)


def test_transient_errors_are_retried(server: OllamaTestServer, backend: OllamaBackend) -> None:
    server.fail_next(2, status=503)
    assert backend.list() == []
    server.fail_next(3, status=503)
    with pytest.raises(Unavailable):
        backend.list()


def test_publish_moves_latest_only_when_the_smoke_test_passes(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    events = ListSink()
    good = publish_model(ServeSpec(tag="v1"), "tiny", tiny_chatml_gguf, backend, events)
    assert good.latest == "tiny:latest" and good.template_mode == "jinja"
    assert good.smoke_passed and good.publish_to_first_token_s is not None
    assert server.models["tiny:latest"] is server.models["tiny:v1"]
    with pytest.raises(SmokeTestFailed) as failed:
        publish_model(
            ServeSpec(tag="v2", smoke_max_tokens=2), "tiny", tiny_chatml_gguf, backend, events
        )
    assert failed.value.result.smoke[0].done_reason == "length"
    assert "tiny:v2" not in server.models
    assert server.models["tiny:latest"] is server.models["tiny:v1"]


def test_an_upload_interrupted_by_a_transient_error_is_sent_again_whole(
    server: OllamaTestServer, backend: OllamaBackend, tiny_chatml_gguf: Path
) -> None:
    server.fail_next(1, status=503, method="POST")
    digest = backend.upload(tiny_chatml_gguf)
    assert server.blobs[digest] == tiny_chatml_gguf.read_bytes()
    assert [m for m, p in server.requests if p == f"/api/blobs/{digest}"] == [
        "HEAD",
        "POST",
        "POST",
    ]
