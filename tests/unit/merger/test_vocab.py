"""Merged models end with tokens = config.vocab_size = embedding rows, logits unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition
from tuneship.merger import reconcile_rows

pytestmark = pytest.mark.unit


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("fixture", ["tiny_llama2", "tiny_chatml"])
def test_rows_padded_to_64_are_truncated_to_the_tokenizer_without_changing_logits(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    import torch

    tokenizer, model = load(request.getfixturevalue(fixture))
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    ids = torch.tensor([[5, 17, 200, len(tokenizer) - 1]])
    with torch.no_grad():
        before = model(ids).logits[..., : len(tokenizer)]
    report = reconcile_rows(model, tokenizer)
    assert (report.rows_merged, report.rows_saved, report.tokenizer_size) == (1088, 1025, 1025)
    assert model.config.vocab_size == 1025
    assert model.get_output_embeddings().weight.shape[0] == 1025
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after)


def test_more_tokens_than_rows_is_refused_with_both_numbers(tiny_llama2: Path) -> None:
    tokenizer, model = load(tiny_llama2)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    with pytest.raises(FailedPrecondition) as caught:
        reconcile_rows(model, tokenizer)
    assert "1025 tokens" in caught.value.message and "1024" in caught.value.message
