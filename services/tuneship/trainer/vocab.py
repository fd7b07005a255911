"""The pad token policy: never EOS, never an end-of-turn token.

A pad that equals EOS (or the template's end-of-turn token) makes the collator or the
model treat every real end of turn as padding, and the model never learns to stop. In
order of preference tuneship uses:

1. ``existing``: the tokenizer's own pad, when it is distinct from those tokens;
2. ``reused``: a reserved/unused special token the vocabulary already has (no resize);
3. ``added``: a new ``<pad>`` special token. Embedding rows grow to a multiple of
   ``pad_to_multiple_of`` and ``config.vocab_size``, the input embeddings and the
   lm_head stay the same size. New rows are set to the mean of the old ones
   (deterministic, and never a likely next token); the adapter carries them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

PAD = "<pad>"
_RESERVED = re.compile(r"reserved|unused|placeholder", re.IGNORECASE)


@dataclass(frozen=True)
class PadDecision:
    """What the pad token is and how the vocabulary changed (the manifest's ``vocab``)."""

    decision: str
    pad_token: str
    pad_token_id: int
    tokenizer_size_before: int
    tokenizer_size_after: int
    embedding_rows_before: int
    embedding_rows_after: int
    pad_to_multiple_of: int

    @property
    def resized(self) -> bool:
        return self.embedding_rows_after != self.embedding_rows_before

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def forbidden_pad_ids(tokenizer: Any, model: Any, end_of_turn: set[int]) -> set[int]:
    """EOS ids (tokenizer, config, generation config), BOS and end-of-turn ids."""
    ids = set(end_of_turn)
    for source in (tokenizer, model.config, getattr(model, "generation_config", None)):
        for name in ("eos_token_id", "bos_token_id"):
            value = getattr(source, name, None)
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    return ids


def choose_pad(tokenizer: Any, forbidden: set[int], template_text: str) -> tuple[str, str]:
    """(decision, token) without changing anything: ``existing``, ``reused`` or ``added``."""
    pad_id = tokenizer.pad_token_id
    if tokenizer.pad_token is not None and pad_id is not None and pad_id not in forbidden:
        return "existing", str(tokenizer.pad_token)
    for index in sorted(tokenizer.added_tokens_decoder):
        content = tokenizer.added_tokens_decoder[index].content
        if index in forbidden or content in template_text:
            continue
        if _RESERVED.search(content):
            return "reused", content
    return "added", PAD


def apply_pad(
    tokenizer: Any, model: Any, forbidden: set[int], template_text: str, pad_to_multiple_of: int
) -> PadDecision:
    """Set the pad token on ``tokenizer`` and ``model`` (resizing when one is added)."""
    size_before = len(tokenizer)
    rows_before = model.get_input_embeddings().weight.shape[0]
    decision, token = choose_pad(tokenizer, forbidden, template_text)
    if decision == "added":
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    rows_after = rows_before
    if len(tokenizer) > rows_before:
        multiple = pad_to_multiple_of
        rows_after = -(-len(tokenizer) // multiple) * multiple
        _resize(model, rows_before, rows_after)
    pad_id = int(tokenizer.convert_tokens_to_ids(token))
    model.config.pad_token_id = pad_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = pad_id
    return PadDecision(
        decision,
        token,
        pad_id,
        size_before,
        len(tokenizer),
        rows_before,
        rows_after,
        pad_to_multiple_of,
    )


def _resize(model: Any, rows_before: int, rows_after: int) -> None:
    import torch

    model.resize_token_embeddings(rows_after, mean_resizing=False)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[rows_before:] = embeddings[:rows_before].mean(dim=0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
            head.weight[rows_before:] = head.weight[:rows_before].mean(dim=0, keepdim=True)
    model.config.vocab_size = rows_after
