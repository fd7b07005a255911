"""The pad token is never EOS or end-of-turn; sizes stay consistent when one is added."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.trainer.masking import AssistantMask
from tuneship.trainer.vocab import apply_pad, forbidden_pad_ids

pytestmark = pytest.mark.unit


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def decide(tokenizer, model, multiple: int = 64):
    forbidden = forbidden_pad_ids(tokenizer, model, AssistantMask(tokenizer).end_of_turn_ids())
    return apply_pad(tokenizer, model, forbidden, tokenizer.chat_template, multiple)


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-chatml"])
def test_fixtures_without_pad_or_spare_tokens_get_an_added_pad(
    name: str, tiny_llama2: Path, tiny_chatml: Path
) -> None:
    tokenizer, model = load(tiny_llama2 if name == "tiny-llama2" else tiny_chatml)
    pad = decide(tokenizer, model)
    assert pad.decision == "added" and pad.pad_token == "<pad>"
    assert pad.pad_token_id == 1024 and pad.pad_token_id != tokenizer.eos_token_id
    assert (pad.tokenizer_size_before, pad.tokenizer_size_after) == (1024, 1025)
    assert (pad.embedding_rows_before, pad.embedding_rows_after) == (1024, 1088)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == model.get_output_embeddings().weight.shape[0] == model.config.vocab_size == 1088
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id == 1024
    # new rows are the mean of the old ones: deterministic, and never a likely next token
    embeddings = model.get_input_embeddings().weight
    assert embeddings[1024:].sub(embeddings[:1024].mean(0)).abs().max() < 1e-6


def test_pad_equal_to_eos_is_replaced(tiny_chatml: Path) -> None:
    tokenizer, model = load(tiny_chatml)
    tokenizer.pad_token = tokenizer.eos_token
    pad = decide(tokenizer, model)
    assert pad.decision == "added" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_a_distinct_existing_pad_is_kept(tiny_llama2: Path) -> None:
    tokenizer, model = load(tiny_llama2)
    tokenizer.pad_token = "<unk>"
    pad = decide(tokenizer, model)
    assert (pad.decision, pad.pad_token, pad.pad_token_id) == ("existing", "<unk>", 0)
    assert pad.embedding_rows_after == pad.embedding_rows_before == 1024


def test_a_reserved_special_token_is_reused_without_resizing(tiny_chatml: Path) -> None:
    tokenizer, model = load(tiny_chatml)
    model.resize_token_embeddings(1088)  # a base whose vocab rows are already padded
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|reserved_special_token_0|>"]})
    size = len(tokenizer)
    pad = decide(tokenizer, model)
    assert (pad.decision, pad.pad_token) == ("reused", "<|reserved_special_token_0|>")
    assert len(tokenizer) == size and pad.embedding_rows_after == 1088
    assert tokenizer.pad_token_id == pad.pad_token_id != tokenizer.eos_token_id
