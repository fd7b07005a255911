"""The tiny model fixtures: deterministic, offline, and shaped like the real situations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from tuneship.quickstart.tiny_models import build_fixture

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-chatml"])
def test_same_seed_builds_are_byte_identical(name: str, tmp_path: Path) -> None:
    first = build_fixture(name, tmp_path / "a", seed=7)
    second = build_fixture(name, tmp_path / "b", seed=7)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for file in files:
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
    other = build_fixture(name, tmp_path / "c", seed=8)
    assert (other / "model.safetensors").read_bytes() != (first / "model.safetensors").read_bytes()


def test_unknown_fixture_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-llama2, tiny-chatml"):
        build_fixture("tiny-gpt", tmp_path / "x")


def test_tiny_llama2_is_the_field_notes_situation(tiny_llama2: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_llama2 / "tokenizer.model").is_file()
    assert (tiny_llama2 / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama2)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama2)
    assert tokenizer.pad_token is None
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert model.config.hidden_size % 256 == 0
    assert not model.config.tie_word_embeddings
    assert len(tokenizer) == model.config.vocab_size == model.get_input_embeddings().weight.shape[0]
    with safe_open(tiny_llama2 / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" in set(weights.keys())  # untied: its own output matrix
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        tokenize=False,
    )
    assert rendered == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>"


def test_tiny_chatml_has_special_turn_tokens_and_tied_embeddings(tiny_chatml: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not (tiny_chatml / "tokenizer.model").exists()
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is None
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer("<|im_start|>user", add_special_tokens=False).input_ids[0] == start
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    assert model.config.tie_word_embeddings
    assert json.loads((tiny_chatml / "config.json").read_text())["hidden_size"] == 256
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (
        rendered
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
