"""Conversations rendered through the model's chat template, as llama.cpp tools read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.converter.template import Conversation, read_chat_template, strip_training_tags

_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant"}  # fmt: skip


def load_conversations(path: Path, limit: int | None = None) -> list[Conversation]:
    """Conversations from a JSONL file in OpenAI ``messages`` or ShareGPT shape."""
    conversations: list[Conversation] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"not valid JSON: {exc.msg}", where=f"{path}:{number}") from exc
            conversations.append(_conversation(record, f"{path}:{number}"))
            if limit is not None and len(conversations) >= limit:
                break
    if not conversations:
        raise InvalidInput("no conversations in the file", where=str(path))
    return conversations


def _conversation(record: Any, where: str) -> Conversation:
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if isinstance(record, dict) and isinstance(record.get("conversations"), list):
        return [
            {"role": _SHAREGPT_ROLES[m["from"]], "content": m["value"]}
            for m in record["conversations"]
        ]
    raise InvalidInput(
        "expected an object with 'messages' (OpenAI) or 'conversations' (ShareGPT)", where=where
    )


def render_text(model: Path, conversations: list[Conversation]) -> tuple[str, int]:
    """The conversations through ``model``'s template, one after another, and their token count."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = read_chat_template(model)
    template = strip_training_tags(template) if template else None
    texts = [
        str(tokenizer.apply_chat_template(c, chat_template=template, tokenize=False))
        for c in conversations
    ]
    text = "\n".join(texts)
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_rendered(model: Path, conversations: list[Conversation], out: Path) -> int:
    """Write the rendered conversations to ``out``; return their token count."""
    text, tokens = render_text(model, conversations)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return tokens
