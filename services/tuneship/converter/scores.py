"""Merge priorities for SentencePiece-style vocabularies converted from ``tokenizer.json``.

On the tokenizer.json-only path the pinned converter writes every token score as
-1000 (``LlamaHfVocab`` has no scores to give). llama.cpp's SentencePiece tokenizer
merges by score, so with all scores equal it merges in an arbitrary order and
tokenizes differently from the Hugging Face BPE tokenizer the model was trained with
(``assistant`` → ``ass ist ant`` instead of ``as sistant``). Hugging Face BPE applies
merges by rank; giving each token the negated rank of the merge that creates it makes
llama.cpp merge in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

PLACEHOLDER_SCORE = -1000.0


def merge_rank_scores(tokenizer_json: Path, n_tokens: int) -> list[float] | None:
    """Scores from a BPE ``tokenizer.json``'s merge ranks (None if not a BPE with merges)."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model", {})
    merges = model.get("merges") or []
    if model.get("type") != "BPE" or not merges:
        return None
    vocab: dict[str, int] = model.get("vocab", {})
    scores = [PLACEHOLDER_SCORE * 1000] * n_tokens
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = vocab.get(left + right)
        if token_id is not None and token_id < n_tokens and scores[token_id] < -len(merges):
            scores[token_id] = -float(rank)
    for token_id in range(n_tokens):
        if scores[token_id] < -len(merges):
            scores[token_id] = PLACEHOLDER_SCORE  # base pieces and added tokens
    return scores


def restore_merge_scores(gguf: Path, model: Path) -> bool:
    """Rewrite placeholder scores in ``gguf`` in place; return whether anything changed."""
    import numpy as np
    from gguf import GGUFReader

    if (model / "tokenizer.model").is_file() or not (model / "tokenizer.json").is_file():
        return False  # the SentencePiece path has the real scores
    reader = GGUFReader(gguf, "r+")
    kind = reader.fields.get("tokenizer.ggml.model")
    field = reader.fields.get("tokenizer.ggml.scores")
    if kind is None or field is None or kind.contents() != "llama":
        return False
    current = np.array([field.parts[i][0] for i in field.data], dtype=np.float32)
    if not np.all(current == PLACEHOLDER_SCORE):
        return False
    scores = merge_rank_scores(model / "tokenizer.json", len(field.data))
    if scores is None:
        return False
    for part_index, score in zip(field.data, scores, strict=True):
        field.parts[part_index][0] = score
    reader.data.flush()
    return True
