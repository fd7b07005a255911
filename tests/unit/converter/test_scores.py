"""Token scores for tokenizer.json-only vocabularies follow the BPE merge ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.converter.scores import PLACEHOLDER_SCORE, merge_rank_scores

pytestmark = pytest.mark.unit


def test_each_merged_token_scores_minus_its_merge_rank(tmp_path: Path) -> None:
    vocab = {"a": 0, "s": 1, "i": 2, "as": 3, "si": 4, "asi": 5, "<x>": 6}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": vocab, "merges": ["s i", "a s", "as i"]}}
    ))  # fmt: skip
    scores = merge_rank_scores(path, 7)
    assert scores == [PLACEHOLDER_SCORE] * 3 + [-1.0, -0.0, -2.0, PLACEHOLDER_SCORE]


def test_not_a_bpe_with_merges_gives_none(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    assert merge_rank_scores(path, 3) is None
