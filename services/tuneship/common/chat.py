"""Chat templates as every stage uses them: read from a model, rendered, training tags out.

TRL's assistant-only loss needs ``{% generation %}`` … ``{% endgeneration %}`` around
the assistant turns. Inference engines do not know these tags (llama.cpp and Ollama
fail on them), so an exported template must not carry them, and must render every
conversation exactly as the original does.

Removing a tag also removes its whitespace control, so ``strip_training_tags`` applies
it to the neighbouring text itself, as Jinja does with the ``trim_blocks`` and
``lstrip_blocks`` settings that Hugging Face templates are rendered with.

Every render goes through ``render_chat``: a template that refuses a conversation (its
own ``raise_exception``, say "System role not supported") or breaks on it is an
``InvalidInput`` naming the template and the conversation, never an internal error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput

TRAINING_TAG = re.compile(r"\{%([-+]?)\s*(?:end)?generation\s*([-+]?)%\}")
Message = dict[str, str]


class ChatTemplateError(InvalidInput):
    """A chat template refused or failed to render a conversation."""


def read_chat_template(model: Path) -> str | None:
    """The chat template of an HF model directory (``chat_template.jinja`` first)."""
    jinja = model / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, str):
            return value
    return None


def has_training_tags(template: str) -> bool:
    """Whether ``template`` has training-only ``{% generation %}`` tags."""
    return TRAINING_TAG.search(template) is not None


def strip_training_tags(template: str) -> str:
    """``template`` without generation tags, with their whitespace control kept."""
    pieces: list[str] = []
    rest = template
    while (match := TRAINING_TAG.search(rest)) is not None:
        before, rest = rest[: match.start()], rest[match.end() :]
        left, right = match.group(1), match.group(2)
        if left == "-":
            before = before.rstrip()
        elif left != "+":
            before = _lstrip_block_line(before)
        if right == "-":
            rest = rest.lstrip()
        elif right != "+" and rest.startswith("\n"):
            rest = rest[1:]  # trim_blocks: the newline after a block tag goes
        pieces.append(before)
    pieces.append(rest)
    return "".join(pieces)


def _lstrip_block_line(text: str) -> str:
    # lstrip_blocks: spaces and tabs between the line start and a block tag go.
    head, newline, tail = text.rpartition("\n")
    if tail.strip(" \t") == "":
        return head + newline
    return text


def inference_template(model: Path) -> str | None:
    """The template an inference engine gets for ``model``: its own, training tags out."""
    template = read_chat_template(model)
    return strip_training_tags(template) if template else None


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    *,
    template: str | None = None,
    generation_prompt: bool = False,
    where: str = "a conversation",
    template_name: str = "the model's chat template",
) -> str:
    """``messages`` rendered to text by ``template`` (default: the tokenizer's own).

    Raises ``ChatTemplateError`` naming ``template_name`` and ``where`` when the template
    refuses the conversation or breaks on it.
    """
    text = _apply(tokenizer, messages, template, generation_prompt, False, where, template_name)
    return str(text)


def chat_ids(
    tokenizer: Any,
    messages: list[Message],
    *,
    template: str | None = None,
    generation_prompt: bool = False,
    where: str = "a conversation",
    template_name: str = "the model's chat template",
) -> list[int]:
    """The token ids of ``messages`` as the tokenizer renders them for training or chat.

    The same errors as ``render_chat``.
    """
    encoded = _apply(tokenizer, messages, template, generation_prompt, True, where, template_name)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(i) for i in ids]


def _apply(
    tokenizer: Any,
    messages: list[Message],
    template: str | None,
    generation_prompt: bool,
    tokenize: bool,
    where: str,
    template_name: str,
) -> Any:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=tokenize,
            add_generation_prompt=generation_prompt,
        )  # fmt: skip
    except Exception as exc:  # the template's own raise_exception, or any Jinja error
        raise ChatTemplateError(
            f"{template_name} cannot render {where}: {type(exc).__name__}: {exc}",
            where=where,
            hint="give conversations the template accepts (some templates refuse a system "
            "message or a first assistant turn), or choose another template.family",
        ) from exc
