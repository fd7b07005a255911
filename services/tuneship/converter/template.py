"""Chat templates on their way into a GGUF: training-only tags out, rendering unchanged.

TRL's assistant-only loss needs ``{% generation %}`` … ``{% endgeneration %}`` around
the assistant turns. Inference engines do not know these tags (llama.cpp and Ollama
fail on them), so the exported template must not carry them, and must render every
conversation exactly as the original does.

Removing a tag also removes its whitespace control, so ``strip_training_tags`` applies
it to the neighbouring text itself, as Jinja does with the ``trim_blocks`` and
``lstrip_blocks`` settings that Hugging Face templates are rendered with.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition

TRAINING_TAG = re.compile(r"\{%([-+]?)\s*(?:end)?generation\s*([-+]?)%\}")
Conversation = list[dict[str, str]]


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


def sample_conversations_for_parity(extra: list[Conversation] | None = None) -> list[Conversation]:
    """Conversations that exercise system prompts, several turns and odd whitespace."""
    fixed: list[Conversation] = [
        [{"role": "user", "content": "Hello!"}],
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        [
            {"role": "user", "content": "  spaces around  "},
            {"role": "assistant", "content": "Line one.\nLine two.\n"},
            {"role": "user", "content": "Thanks!\n\n"},
            {"role": "assistant", "content": "You are welcome."},
            {"role": "user", "content": "Bye"},
        ],
    ]
    return fixed + list(extra or [])


def check_same_rendering(
    tokenizer: Any, original: str, stripped: str, conversations: list[Conversation]
) -> None:
    """Raise ``FailedPrecondition`` with a diff if the templates render differently."""
    for index, conversation in enumerate(conversations):
        for prompt in (False, True):
            a = _render(tokenizer, original, conversation, prompt)
            b = _render(tokenizer, stripped, conversation, prompt)
            if a != b:
                diff = "\n".join(
                    difflib.unified_diff(
                        a.splitlines(), b.splitlines(), "original", "exported", lineterm=""
                    )
                )
                raise FailedPrecondition(
                    f"the exported chat template renders conversation {index} differently "
                    f"from the original (add_generation_prompt={prompt}):\n{diff}",
                    hint="simplify the whitespace control around the {% generation %} tags",
                )


def _render(tokenizer: Any, template: str, conversation: Conversation, prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=False, add_generation_prompt=prompt
        )
    )
