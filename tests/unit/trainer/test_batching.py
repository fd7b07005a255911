"""Padding-free batches keep examples apart; padded batches count their padding."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.trainer.batching import (
    PaddedCollator,
    PaddingFreeCollator,
    choose_batching,
    keeps_examples_apart,
)
from tuneship.trainer.masking import IGNORE

pytestmark = pytest.mark.unit

FEATURES = [
    {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, 7, 8]},
    {"input_ids": [9, 10], "labels": [9, 10]},
]


def test_padding_free_rows_restart_positions_and_never_train_across_examples() -> None:
    collator = PaddingFreeCollator()
    batch = collator(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    # the first token of the second example is not predicted from the first example
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, IGNORE, 10]]
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert (collator.count.real, collator.count.padded, collator.count.trained) == (6, 0, 3)


def test_padded_batches_count_their_padding() -> None:
    collator = PaddedCollator(pad_token_id=0)
    batch = collator(FEATURES)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist()[1] == [9, 10, IGNORE, IGNORE]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 0, 0]
    assert collator.count.padding_fraction == pytest.approx(2 / 8)


@pytest.mark.parametrize("name", ["tiny-llama2", "tiny-chatml"])
def test_packed_logits_equal_separate_logits_on_cpu(
    name: str, tiny_llama2: Path, tiny_chatml: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_llama2 if name == "tiny-llama2" else tiny_chatml
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert keeps_examples_apart(model, 1024)
    batch = PaddingFreeCollator()(FEATURES)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        first = model(input_ids=torch.tensor([FEATURES[0]["input_ids"]])).logits
        second = model(input_ids=torch.tensor([FEATURES[1]["input_ids"]])).logits
    torch.testing.assert_close(packed[:, :4], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[:, 4:], second, rtol=1e-4, atol=1e-5)


def test_dense_attention_gets_length_grouped_batches(tiny_chatml: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chatml)
    assert model.config._attn_implementation in ("sdpa", "eager")
    assert choose_batching(model, True, 1024) == "padded-length-grouped"
    assert choose_batching(model, False, 1024) == "padded-length-grouped"
