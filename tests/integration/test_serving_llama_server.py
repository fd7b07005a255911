"""The llama-server backend with real llama.cpp processes and the tiny fixture GGUFs.

The fixtures are untrained and never end a turn by themselves; each test first asks
the model greedily and publishes with a stop string taken from that answer, so the
answer ends early with ``done_reason: stop`` — the path a trained model takes at its
end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.events import ListSink, Metrics
from tuneship.common.llama_server import LlamaServer
from tuneship.common.spec import ServeSpec
from tuneship.common.toolchain import Toolchain
from tuneship.serving import ChatSession, LlamaServerBackend, SmokeTestFailed, publish_model
from tuneship.testing.serving import early_stop_string

pytestmark = pytest.mark.integration

PROMPT = "Hello! Who are you?"


def greedy_answer(toolchain: Toolchain, gguf: Path, tmp_path: Path, system: str | None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": PROMPT})
    server = LlamaServer(toolchain.binary("llama-server"), gguf, tmp_path / "probe.log")
    with server:
        chunks = server.stream_chat_chunks(messages, max_tokens=24, temperature=0.0, seed=0)
        return "".join(text for text, _, _ in chunks)


@pytest.fixture
def backend(toolchain: Toolchain, tmp_path: Path) -> Iterator[LlamaServerBackend]:
    with LlamaServerBackend(toolchain, tmp_path / "serving") as running:
        yield running


@pytest.fixture
def chatml_stop(toolchain: Toolchain, tiny_chatml_gguf: Path, tmp_path: Path) -> str:
    return early_stop_string(greedy_answer(toolchain, tiny_chatml_gguf, tmp_path, None))


def test_publish_smoke_tests_and_the_answer_stops_by_itself(
    backend: LlamaServerBackend, tiny_chatml_gguf: Path, chatml_stop: str
) -> None:
    events = ListSink()
    serve = ServeSpec(smoke_prompts=[PROMPT], parameters={"stop": [chatml_stop]})
    result = publish_model(serve, "tiny", tiny_chatml_gguf, backend, events)
    assert result.latest == "tiny:latest" and result.template_mode == "jinja"
    assert result.stop == ["<|im_end|>", chatml_stop]
    answer = result.smoke[0]
    assert answer.passed and answer.done_reason == "stop" and answer.text.strip()
    assert answer.tokens is not None and answer.tokens < serve.smoke_max_tokens
    assert result.publish_to_first_token_s is not None and result.publish_to_first_token_s < 60
    metrics = [e.values for e in events.of_type(Metrics)]
    assert metrics[-1]["publish_to_first_token_s"] == result.publish_to_first_token_s

    stream = backend.chat("tiny", [{"role": "user", "content": PROMPT}], temperature=0.0, seed=0)
    pieces = list(stream)
    assert len(pieces) >= 1 and "".join(pieces) == answer.text
    assert stream.done_reason == "stop" and stream.first_piece_s is not None


def test_a_failed_smoke_test_leaves_latest_where_it_was(
    backend: LlamaServerBackend, tiny_chatml_gguf: Path, chatml_stop: str
) -> None:
    good = ServeSpec(tag="v1", smoke_prompts=[PROMPT], parameters={"stop": [chatml_stop]})
    publish_model(good, "tiny", tiny_chatml_gguf, backend, ListSink())
    bad = ServeSpec(tag="v2", smoke_prompts=[PROMPT], smoke_max_tokens=8)
    with pytest.raises(SmokeTestFailed) as failed:
        publish_model(bad, "tiny", tiny_chatml_gguf, backend, ListSink())
    assert failed.value.result.smoke[0].done_reason == "length"
    assert "left as it was" in failed.value.message
    with pytest.raises(NotFound):
        backend.show("tiny:v2")
    latest = backend.show("tiny:latest")
    assert chatml_stop in latest.parameters["stop"]
    assert {m.name for m in backend.list()} == {"tiny:v1", "tiny:latest"}
    assert backend.chat("tiny", [{"role": "user", "content": PROMPT}], temperature=0.0).text()


def test_a_crashed_server_is_restarted_and_delete_stops_it(
    backend: LlamaServerBackend, tiny_chatml_gguf: Path, chatml_stop: str
) -> None:
    serve = ServeSpec(tag="v1", smoke_prompts=[PROMPT], parameters={"stop": [chatml_stop]})
    publish_model(serve, "tiny", tiny_chatml_gguf, backend, ListSink())
    (server,) = backend._servers.values()
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    assert backend.chat("tiny:v1", [{"role": "user", "content": PROMPT}]).text()
    assert backend.restarts == 1
    (restarted,) = backend._servers.values()
    backend.delete("tiny:v1")
    assert restarted.running()  # tiny:latest still uses the same blob
    backend.delete("tiny:latest")
    assert not restarted.running() and backend.list() == []


def test_system_prompts_and_history_reach_the_model(
    toolchain: Toolchain, backend: LlamaServerBackend, tiny_llama2_gguf: Path, tmp_path: Path
) -> None:
    system = "You are a pirate."
    stop = early_stop_string(greedy_answer(toolchain, tiny_llama2_gguf, tmp_path, system))
    serve = ServeSpec(smoke_prompts=[PROMPT], system=system, parameters={"stop": [stop]})
    result = publish_model(serve, "tiny-llama2", tiny_llama2_gguf, backend, ListSink())
    assert result.smoke_passed and result.stop[0] == "</s>"
    session = ChatSession(backend, "tiny-llama2", options={"num_predict": 8, "temperature": 0.0})
    first = "".join(session.ask(PROMPT))
    assert first == result.smoke[0].text  # the published system prompt was applied
    "".join(session.ask("And then?"))
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
    assert session.messages_for("x")[:2] == session.history[:2]


def test_a_go_template_is_refused_on_llama_server(
    backend: LlamaServerBackend, tiny_chatml_gguf: Path
) -> None:
    with pytest.raises(InvalidInput, match="Jinja"):
        publish_model(ServeSpec(template_mode="go"), "t", tiny_chatml_gguf, backend, ListSink())
    with pytest.raises(InvalidInput, match="Go TEMPLATE"):
        backend.publish(
            tiny_chatml_gguf, "t", "v1", template="{{ .Prompt }}", system=None, parameters={}
        )
