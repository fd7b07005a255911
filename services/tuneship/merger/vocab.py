"""Keeping token count, ``config.vocab_size`` and embedding rows equal in a merged model.

The trainer pads the embedding matrix to a multiple of 64 rows when it adds ``<pad>``
(faster matmuls on GPUs), so a merged model has more rows than tokens. llama.cpp
refuses any GGUF whose token list and ``token_embd`` rows differ, and the converter
only pads the token list on its SentencePiece path. The merge therefore truncates the
rows back to the tokenizer size: rows past the last token id can never be an input,
and as outputs they would be ids with no text. The result converts the same way on
both converter paths, and the model's output over real tokens is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition


@dataclass(frozen=True)
class VocabReport:
    """Sizes before and after reconciliation (all equal afterwards)."""

    tokenizer_size: int
    rows_merged: int
    rows_saved: int
    pad_token: str | None
    pad_token_id: int | None
    eos_token_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile_rows(model: Any, tokenizer: Any) -> VocabReport:
    """Make the model's embedding (and lm_head) rows equal to ``len(tokenizer)``.

    Raises ``FailedPrecondition`` when the tokenizer has more tokens than the model
    has rows: those tokens were never trained, and inventing rows would hide a bug.
    """
    size = len(tokenizer)
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows < size:
        raise FailedPrecondition(
            f"the tokenizer has {size} tokens but the merged model has only {rows} embedding rows",
            hint="the adapter must carry the resized embeddings; check the training "
            "manifest's vocab.embedding_rows_after and the adapter's saved embeddings",
        )
    if rows > size:
        model.resize_token_embeddings(size, mean_resizing=False)
    model.config.vocab_size = size
    return VocabReport(
        tokenizer_size=size,
        rows_merged=rows,
        rows_saved=size,
        pad_token=tokenizer.pad_token,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def write_sentencepiece_added_tokens(out: Path, tokenizer: Any) -> Path | None:
    """Name the tokens added past a ``tokenizer.model`` in ``added_tokens.json``.

    transformers 5 no longer writes this file, and without it the converter's
    SentencePiece path turns an added ``<pad>`` into a nameless ``[PAD1024]``.
    """
    if not (out / "tokenizer.model").is_file():
        return None
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(out / "tokenizer.model"))
    added = {
        token.content: token_id
        for token_id, token in tokenizer.added_tokens_decoder.items()
        if token_id >= sp.vocab_size()
    }
    if not added:
        return None
    path = out / "added_tokens.json"
    path.write_text(json.dumps(added, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
