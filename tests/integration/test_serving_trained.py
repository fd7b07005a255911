"""A trained pirate model, published through llama-server, stops by itself.

tiny-chatml is fine-tuned on the pirate conversations, merged and converted to GGUF by
the real stages; publishing it with only the GGUF's own stop tokens must pass the smoke
test with the trained reply, ended by the model (``done_reason: stop``) well before the
token limit. The Go TEMPLATE generated for older Ollama servers, rendered by Go, gives
a prompt it answers the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.events import ListSink
from tuneship.common.gguf_meta import read_gguf
from tuneship.common.llama_server import LlamaServer
from tuneship.common.spec import PipelineSpec
from tuneship.common.toolchain import Toolchain
from tuneship.converter import convert
from tuneship.merger import merge
from tuneship.quickstart.conversations import PIRATE_REPLY
from tuneship.serving import ChatSession, LlamaServerBackend, publish, stop_tokens, to_go_template
from tuneship.testing.serving import build_go_renderer, go_render
from tuneship.trainer import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gotemplate"


def pirate_spec(base: Path, data: Path) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "pirate"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": {"max_steps": 80, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
                      "save_steps": 40},
            "serve": {"smoke_prompts": ["Where is the treasure?", "Who buried the gold?"],
                      "smoke_max_tokens": 64},
        }
    )  # fmt: skip


def test_trained_model_answers_and_stops_by_itself(
    tiny_chatml: Path, sample_data: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    spec = pirate_spec(tiny_chatml, sample_data / "pirate")
    trained = train(spec, tiny_chatml, tmp_path / "train", ListSink())
    merged = merge(spec, tiny_chatml, trained.out, tmp_path / "merged", ListSink())
    gguf = tmp_path / "pirate-f16.gguf"
    convert(merged.out, gguf, toolchain=toolchain, events=ListSink())

    with LlamaServerBackend(toolchain, tmp_path / "serving") as backend:
        result = publish(spec, gguf, backend, ListSink())
        assert result.smoke_passed and result.latest == "pirate:latest"
        for answer in result.smoke:
            assert answer.done_reason == "stop" and answer.text.strip() == PIRATE_REPLY
            assert answer.tokens is not None and answer.tokens < 64
        (tmp_path / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        session = ChatSession(backend, "pirate", options={"num_predict": 64, "temperature": 0.0})
        pieces = list(session.ask("Where is the treasure?"))
        assert len(pieces) > 1 and "".join(pieces).strip() == PIRATE_REPLY
        assert session.last_done_reason == "stop"
        print(f"publish -> first token: {result.publish_to_first_token_s:.3f}s")

    # The path for Ollama older than 0.30: the generated Go TEMPLATE, rendered by Go, is a
    # prompt the trained model answers and ends by itself.
    renderer = build_go_renderer(TOOL, tmp_path)
    info = read_gguf(gguf)
    assert info.chat_template
    go = to_go_template(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
    (prompt,) = go_render(
        renderer, go.text, [[{"role": "user", "content": "Who buried the gold?"}]]
    )
    server = LlamaServer(toolchain.binary("llama-server"), gguf, tmp_path / "raw.log")
    with server:
        answer = server.post(
            "/completion",
            {"prompt": prompt, "n_predict": 64, "temperature": 0.0, "stop": stop_tokens(info)},
        )
    assert answer["content"].strip() == PIRATE_REPLY
    assert answer["stop_type"] in ("eos", "word"), answer["stop_type"]
