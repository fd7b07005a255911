"""From a spec to tokenized, masked examples (shared by training and ``inspect-data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.conversations import ConversationSet, RecordError, Skipped, load_conversations
from tuneship.common.errors import InvalidInput
from tuneship.common.events import EventSink, Log
from tuneship.common.spec import PipelineSpec
from tuneship.trainer.masking import AssistantMask, Example
from tuneship.trainer.model_io import load_tokenizer
from tuneship.trainer.template import ChosenTemplate, choose_template


@dataclass
class PreparedData:
    """Everything known about the data before a model is loaded."""

    tokenizer: Any
    template: ChosenTemplate
    mask: AssistantMask
    conversations: ConversationSet
    train: list[Example] = field(default_factory=list)
    eval: list[Example] = field(default_factory=list)

    @property
    def skipped(self) -> list[Skipped]:
        return self.conversations.skipped

    def mask_summary(self) -> dict[str, Any]:
        trained = sum(e.trained for e in self.train)
        total = sum(len(e.input_ids) for e in self.train)
        return {
            "trained_tokens": trained,
            "masked_tokens": total - trained,
            "train_on": self.mask.train_on,
        }


def prepare_tokenizer(spec: PipelineSpec, base: Path) -> tuple[Any, ChosenTemplate, AssistantMask]:
    """The base tokenizer with the chosen template, and the mask built on it."""
    tokenizer = load_tokenizer(base, spec.model)
    template = choose_template(spec.template, tokenizer)
    mask = AssistantMask(tokenizer, spec.train.train_on, spec.dataset.max_length)
    return tokenizer, template, mask


def encode_all(prepared: PreparedData, spec: PipelineSpec, events: EventSink) -> None:
    """Tokenize and mask every conversation, applying ``dataset.on_invalid``."""
    conversations = prepared.conversations
    prepared.train = _encode(prepared.mask, conversations.train, spec, conversations.skipped)
    prepared.eval = _encode(prepared.mask, conversations.eval, spec, conversations.skipped)
    if not prepared.train:
        raise InvalidInput(
            "no training conversations left after tokenizing",
            where=spec.dataset.train,
            hint="see the skipped list; raise dataset.max_length if they were over-long",
        )
    for item in conversations.skipped:
        events.emit(Log("train", f"skipped {item.where}: {item.reason}", "warning"))
    events.emit(
        Log(
            "train",
            f"{len(prepared.train)} train / {len(prepared.eval)} eval conversations, "
            f"{len(conversations.skipped)} skipped, {conversations.duplicates} duplicates removed",
        )
    )


def prepare_data(spec: PipelineSpec, base: Path, events: EventSink) -> PreparedData:
    """Tokenizer, template and masked examples for a spec (no model loaded)."""
    tokenizer, template, mask = prepare_tokenizer(spec, base)
    prepared = PreparedData(tokenizer, template, mask, load_conversations(spec.dataset))
    encode_all(prepared, spec, events)
    return prepared


def _encode(
    mask: AssistantMask, conversations: list, spec: PipelineSpec, skipped: list[Skipped]
) -> list[Example]:
    examples = []
    for conversation in conversations:
        try:
            examples.append(mask.encode(conversation.messages, conversation.where))
        except RecordError as exc:
            if spec.dataset.on_invalid == "error":
                raise InvalidInput(
                    str(exc),
                    where=conversation.where,
                    hint="fix the record, or set dataset.on_invalid: skip to leave it out",
                ) from exc
            skipped.append(Skipped(conversation.where, str(exc)))
    return examples


def inspect_data(spec: PipelineSpec, base: Path, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` training examples as the trainer sees them.

    Each item: ``where``, ``text`` (the rendered conversation), ``segments`` (a list of
    ``{"text", "trained"}`` in order), ``trained_spans`` (the decoded text of every
    trained span), ``trained_tokens`` and ``masked_tokens``.
    """
    from tuneship.common.events import NullSink

    prepared = prepare_data(spec, base, NullSink())
    tokenizer = prepared.tokenizer
    report = []
    for example in prepared.train[:n]:
        segments, cursor = [], 0
        for start, end in example.spans:
            if start > cursor:
                segments.append(
                    {"text": tokenizer.decode(example.input_ids[cursor:start]), "trained": False}
                )
            segments.append(
                {"text": tokenizer.decode(example.input_ids[start:end]), "trained": True}
            )
            cursor = end
        if cursor < len(example.input_ids):
            segments.append(
                {"text": tokenizer.decode(example.input_ids[cursor:]), "trained": False}
            )
        report.append(
            {
                "where": example.where,
                "text": tokenizer.decode(example.input_ids),
                "segments": segments,
                "trained_spans": [s["text"] for s in segments if s["trained"]],
                "trained_tokens": example.trained,
                "masked_tokens": len(example.input_ids) - example.trained,
            }
        )
    return report
