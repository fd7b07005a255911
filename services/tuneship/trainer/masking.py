"""Which tokens of a conversation are trained: derived by rendering, for any template.

For each assistant turn ``i`` the conversation is rendered up to turn ``i`` with the
generation prompt, and up to and including turn ``i``. The tokens the second render
adds are that turn's reply; everything before is context. No marker string is ever
searched for in the text, so message content cannot confuse the mask, and message
content is tokenized with control tokens sanitized (a user typing ``<|im_end|>`` gets
the characters, not the control token).

The reply span ends with the last control token the template writes after the reply
(``</s>``, ``<|im_end|>``, ``<|eot_id|>``...): that token is trained, so the model
learns to stop. Template text after it (ChatML's ``\\n``) is context, not a target;
generation stops at the control token, so that text is never needed to stop.

A template that rewrites earlier turns when later ones are added (so that a prefix
render is not a prefix of the full render) is refused: its spans cannot be known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneship.common.conversations import Message, RecordError
from tuneship.common.errors import FailedPrecondition

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """A tokenized conversation: ``labels`` is ``IGNORE`` wherever nothing is trained."""

    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]
    where: str

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class PairExample:
    """A tokenized preference pair: the prompt's tokens (with the generation prompt) and
    each reply's trained tokens, up to and including the control token that ends it."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str

    @property
    def trained(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def length(self) -> int:
        """Tokens in the longer of its two sequences (prompt + reply)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


class TemplateSpanError(FailedPrecondition):
    """The chat template does not let tuneship tell the replies apart from the context."""


class AssistantMask:
    """Tokenizes conversations with the tokenizer's chat template and masks the labels.

    ``train_on``: ``assistant`` (every reply), ``last_assistant`` (the final reply) or
    ``all`` (every token).
    """

    def __init__(self, tokenizer: Any, train_on: str = "assistant", max_length: int = 2048):
        self.tokenizer = tokenizer
        self.train_on = train_on
        self.max_length = max_length
        self.control_ids = {
            index
            for index, token in tokenizer.added_tokens_decoder.items()
            if getattr(token, "special", False)
        } | set(tokenizer.all_special_ids)
        # The most characters one token can stand for (byte-fallback pieces overstate it).
        self.longest_token = max((len(t) for t in tokenizer.get_vocab()), default=1)

    def encode(
        self, messages: list[Message], where: str = "<conversation>", limit: bool = True
    ) -> Example:
        """Tokenize one conversation (``RecordError`` when too long or not renderable).

        ``limit``: refuse conversations over ``max_length`` (a probe of the template is not
        a training example and is never refused).
        """
        characters = sum(len(m["content"]) for m in messages)
        if limit and characters > self.max_length * self.longest_token * 4:
            # Far too long whatever the tokenizer does: no need to tokenize megabytes.
            raise RecordError(
                f"over-long conversation: {characters:,} characters, far more than "
                f"dataset.max_length {self.max_length} tokens can hold"
            )
        full_text = self._render(messages, False)
        full = self._ids(messages, False)
        if limit and len(full) > self.max_length:
            raise RecordError(
                f"over-long conversation: {len(full)} tokens > dataset.max_length {self.max_length}"
            )
        spans = [
            self._reply_span(messages, i, full, full_text)
            for i, message in enumerate(messages)
            if message["role"] == "assistant"
        ]
        if self.train_on == "last_assistant":
            spans = spans[-1:]
        elif self.train_on == "all":
            spans = [(0, len(full))]
        labels = [IGNORE] * len(full)
        for start, end in spans:
            labels[start:end] = full[start:end]
        if all(label == IGNORE for label in labels):
            raise RecordError("no trained tokens: the template rendered no assistant reply")
        return Example(full, labels, spans, where)

    def encode_pair(
        self, prompt: list[Message], chosen: str, rejected: str, where: str = "<pair>"
    ) -> PairExample:
        """Tokenize a preference pair: each reply's span is found by rendering, exactly
        as an SFT reply's is, so the loss covers the reply and its end-of-turn token and
        nothing the template writes after it. ``RecordError`` when too long."""
        sides = []
        for reply in (chosen, rejected):
            messages = [*prompt, {"role": "assistant", "content": reply}]
            example = self.encode(messages, where)
            full = example.input_ids
            start, end = self._reply_span(
                messages, len(messages) - 1, full, self._render(messages, False)
            )
            sides.append((full[:start], full[start:end]))
        (prompt_ids, chosen_ids), (other_prompt, rejected_ids) = sides
        if prompt_ids != other_prompt:
            raise RecordError(
                "the prompt tokenizes differently before the chosen and the rejected reply "
                "(tokens merge across the reply boundary), so the two replies cannot be "
                "compared on the same context"
            )
        if not chosen_ids or not rejected_ids:
            raise RecordError("no trained tokens: the template rendered no assistant reply")
        return PairExample(prompt_ids, chosen_ids, rejected_ids, where)

    def end_of_turn_ids(self) -> set[int]:
        """The control tokens that close a reply under this template (never a pad)."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
        example = self.encode(probe, "<probe>", limit=False)
        return {example.input_ids[end - 1] for _, end in example.spans} & self.control_ids

    def _reply_span(
        self, messages: list[Message], index: int, full: list[int], full_text: str
    ) -> tuple[int, int]:
        prompt_text = self._render(messages[:index], True)
        turn_text = self._render(messages[: index + 1], False)
        if not (turn_text.startswith(prompt_text) and full_text.startswith(turn_text)):
            raise TemplateSpanError(
                f"the chat template does not render turn {index} as an extension of the "
                "turns before it, so the trained tokens cannot be determined",
                where="template",
                hint="use a template that renders earlier turns the same whatever follows "
                "(template.family or template.path), or train_on: all",
            )
        start = _common_prefix(full, self._ids(messages[:index], True))
        end = _common_prefix(full, self._ids(messages[: index + 1], False))
        closing = [j for j in range(start, end) if full[j] in self.control_ids]
        return start, (closing[-1] + 1 if closing else end)

    def _render(self, messages: list[Message], generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # the template's own raise_exception, or a Jinja error
            raise RecordError(f"the chat template refused this conversation: {exc}") from exc
        return str(text)

    def _ids(self, messages: list[Message], generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            messages,
            tokenize=True,
            add_generation_prompt=generation_prompt,
            sanitize_control_tokens=True,
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count
