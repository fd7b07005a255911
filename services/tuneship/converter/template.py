"""Which conversations the export checks templates on, and the stripped-template check.

Parity and evaluation run on conversations the model's template accepts: the user's
own (held-out first), plus generated variants — a system prompt, several turns, odd
whitespace — kept only where the template renders them. A template that refuses a
system message (some Gemma and Mistral templates) thus never fails the export on a
sample the user never sent, while a user conversation it refuses is an error that
names the template and the record.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tuneship.common.chat import ChatTemplateError, inference_template, render_chat
from tuneship.common.conversations import Conversation
from tuneship.common.errors import FailedPrecondition

_GENERATED: list[list[dict[str, str]]] = [
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


def generated_samples() -> list[Conversation]:
    """The generated variants, before any template has had its say."""
    return [Conversation(m, f"generated sample {i}") for i, m in enumerate(_GENERATED)]


def parity_conversations(
    tokenizer: Any,
    template: str | None,
    user: list[Conversation],
    *,
    limit: int = 8,
    template_name: str = "the model's chat template",
) -> list[Conversation]:
    """Up to ``limit`` of the user's conversations, then every generated variant that
    ``template`` renders. A user conversation the template refuses raises
    ``ChatTemplateError`` (it names the template and the record)."""
    chosen = list(user[:limit])
    for conversation in chosen:
        for prompt in (False, True):
            render_chat(tokenizer, conversation.messages, template=template,
                        generation_prompt=prompt, where=conversation.where,
                        template_name=template_name)  # fmt: skip
    for sample in generated_samples():
        try:
            for prompt in (False, True):
                render_chat(tokenizer, sample.messages, template=template,
                            generation_prompt=prompt, where=sample.where)  # fmt: skip
        except ChatTemplateError:
            continue  # the template does not accept this shape: not a sample for it
        chosen.append(sample)
    return chosen


def check_template_accepts(model: Path, conversations: list[Conversation]) -> None:
    """Render each conversation (with and without the generation prompt) through
    ``model``'s inference template; the first one refused raises ``ChatTemplateError``.

    Run before any conversion, so a template problem costs seconds, not an export.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = inference_template(model)
    for conversation in conversations:
        for prompt in (False, True):
            render_chat(tokenizer, conversation.messages, template=template,
                        generation_prompt=prompt, where=conversation.where)  # fmt: skip


def check_same_rendering(
    tokenizer: Any, original: str, stripped: str, conversations: list[Conversation]
) -> None:
    """Raise ``FailedPrecondition`` with a diff if the templates render differently."""
    for conversation in conversations:
        for prompt in (False, True):
            a = render_chat(tokenizer, conversation.messages, template=original,
                            generation_prompt=prompt, where=conversation.where)  # fmt: skip
            b = render_chat(tokenizer, conversation.messages, template=stripped,
                            generation_prompt=prompt, where=conversation.where,
                            template_name="the exported chat template")  # fmt: skip
            if a != b:
                diff = "\n".join(
                    difflib.unified_diff(
                        a.splitlines(), b.splitlines(), "original", "exported", lineterm=""
                    )
                )
                raise FailedPrecondition(
                    f"the exported chat template renders {conversation.where} differently "
                    f"from the original (add_generation_prompt={prompt}):\n{diff}",
                    hint="simplify the whitespace control around the {% generation %} tags",
                )
