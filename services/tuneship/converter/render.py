"""Conversations rendered through the model's chat template, as text for llama-imatrix.

The text keeps the template's special tokens as text; ``llama-imatrix`` is run with
``--parse-special`` so that they become the single tokens the model was trained on.
"""

from __future__ import annotations

from pathlib import Path

from tuneship.common.chat import inference_template, render_chat
from tuneship.common.conversations import Conversation


def render_text(model: Path, conversations: list[Conversation]) -> tuple[str, int]:
    """The conversations through ``model``'s template, one after another, and their token count."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = inference_template(model)
    texts = [
        render_chat(tokenizer, c.messages, template=template, where=c.where) for c in conversations
    ]
    text = "\n".join(texts)
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_rendered(model: Path, conversations: list[Conversation], out: Path) -> int:
    """Write the rendered conversations to ``out``; return their token count."""
    text, tokens = render_text(model, conversations)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return tokens
