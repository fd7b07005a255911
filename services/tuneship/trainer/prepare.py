"""From a spec to tokenized, masked examples (shared by training and ``inspect-data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.conversations import ConversationSet, RecordError, Skipped
from tuneship.common.errors import InvalidInput
from tuneship.common.events import EventSink, Log
from tuneship.common.preferences import PreferenceSet, load_training_data
from tuneship.common.spec import DatasetSpec, PipelineSpec
from tuneship.trainer.masking import AssistantMask, Example, PairExample
from tuneship.trainer.model_io import load_tokenizer
from tuneship.trainer.template import ChosenTemplate, choose_template


@dataclass
class PreparedData:
    """Everything known about the data before a model is loaded: conversations
    (``train``/``eval``, objective sft) or preference pairs (``train_pairs``/``eval_pairs``,
    objective dpo or orpo)."""

    tokenizer: Any
    template: ChosenTemplate
    mask: AssistantMask
    conversations: ConversationSet | PreferenceSet
    train: list[Example] = field(default_factory=list)
    eval: list[Example] = field(default_factory=list)
    train_pairs: list[PairExample] = field(default_factory=list)
    eval_pairs: list[PairExample] = field(default_factory=list)

    @property
    def preference(self) -> bool:
        return isinstance(self.conversations, PreferenceSet)

    @property
    def counts(self) -> tuple[int, int]:
        """Training and held-out examples (conversations or pairs)."""
        if self.preference:
            return len(self.train_pairs), len(self.eval_pairs)
        return len(self.train), len(self.eval)

    @property
    def skipped(self) -> list[Skipped]:
        return self.conversations.skipped

    def mask_summary(self) -> dict[str, Any]:
        if self.preference:
            trained = sum(e.trained for e in self.train_pairs)
            total = sum(len(e.prompt_ids) * 2 + e.trained for e in self.train_pairs)
            train_on = "chosen and rejected replies"
        else:
            trained = sum(e.trained for e in self.train)
            total = sum(len(e.input_ids) for e in self.train)
            train_on = self.mask.train_on
        return {"trained_tokens": trained, "masked_tokens": total - trained, "train_on": train_on}


def prepare_tokenizer(spec: PipelineSpec, base: Path) -> tuple[Any, ChosenTemplate, AssistantMask]:
    """The base tokenizer with the chosen template, and the mask built on it."""
    tokenizer = load_tokenizer(base, spec.model)
    template = choose_template(spec.template, tokenizer)
    mask = AssistantMask(tokenizer, spec.train.train_on, spec.dataset.max_length)
    return tokenizer, template, mask


def encode_all(prepared: PreparedData, spec: PipelineSpec, events: EventSink) -> None:
    """Tokenize and mask every conversation or pair, applying ``dataset.on_invalid``."""
    data = prepared.conversations
    if isinstance(data, PreferenceSet):
        prepared.train_pairs = _encode_pairs(prepared.mask, data.train, spec, data.skipped)
        prepared.eval_pairs = _encode_pairs(prepared.mask, data.eval, spec, data.skipped)
        what = "preference pairs"
    else:
        prepared.train = _encode(prepared.mask, data.train, spec, data.skipped)
        prepared.eval = _encode(prepared.mask, data.eval, spec, data.skipped)
        what = "conversations"
    train, held_out = prepared.counts
    if not train:
        raise InvalidInput(
            f"no training {what} left after tokenizing",
            where=spec.dataset.train,
            hint="see the skipped list; raise dataset.max_length if they were over-long",
        )
    for item in data.skipped:
        events.emit(Log("train", f"skipped {item.where}: {item.reason}", "warning"))
    events.emit(
        Log(
            "train",
            f"{train} train / {held_out} eval {what}, "
            f"{len(data.skipped)} skipped, {data.duplicates} duplicates removed",
        )
    )


def prepare_data(spec: PipelineSpec, base: Path, events: EventSink) -> PreparedData:
    """Tokenizer, template and masked examples for a spec (no model loaded)."""
    tokenizer, template, mask = prepare_tokenizer(spec, base)
    prepared = PreparedData(tokenizer, template, mask, load_training_data(spec))
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
            _invalid(exc, conversation.where, spec.dataset, skipped)
    return examples


def _encode_pairs(
    mask: AssistantMask, pairs: list, spec: PipelineSpec, skipped: list[Skipped]
) -> list[PairExample]:
    examples = []
    for pair in pairs:
        try:
            examples.append(mask.encode_pair(pair.prompt, pair.chosen, pair.rejected, pair.where))
        except RecordError as exc:
            _invalid(exc, pair.where, spec.dataset, skipped)
    return examples


def _invalid(exc: RecordError, where: str, dataset: DatasetSpec, skipped: list[Skipped]) -> None:
    """Raise for a record that cannot be encoded, or note it under ``on_invalid: skip``."""
    if dataset.on_invalid == "error":
        raise InvalidInput(
            str(exc),
            where=where,
            hint="fix the record, or set dataset.on_invalid: skip to leave it out",
        ) from exc
    skipped.append(Skipped(where, str(exc)))


def inspect_data(spec: PipelineSpec, base: Path, n: int = 3) -> list[dict[str, Any]]:
    """The first ``n`` training examples as the trainer sees them.

    Preference data: two items per pair, ``side`` ``chosen`` then ``rejected``.
    Each item: ``where``, ``text`` (the rendered conversation), ``segments`` (a list of
    ``{"text", "trained"}`` in order), ``trained_spans`` (the decoded text of every
    trained span), ``trained_tokens`` and ``masked_tokens``.
    """
    from tuneship.common.events import NullSink

    prepared = prepare_data(spec, base, NullSink())
    tokenizer = prepared.tokenizer
    if prepared.preference:
        return [
            _side(tokenizer, pair, side)
            for pair in prepared.train_pairs[:n]
            for side in ("chosen", "rejected")
        ]
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


def _side(tokenizer: Any, pair: PairExample, side: str) -> dict[str, Any]:
    """One side of a preference pair for ``inspect_data``: the prompt (masked) and the
    reply (trained), with ``side`` saying which."""
    reply = pair.chosen_ids if side == "chosen" else pair.rejected_ids
    segments = [
        {"text": tokenizer.decode(pair.prompt_ids), "trained": False},
        {"text": tokenizer.decode(reply), "trained": True},
    ]
    return {
        "where": pair.where,
        "side": side,
        "text": tokenizer.decode(pair.prompt_ids + reply),
        "segments": segments,
        "trained_spans": [segments[1]["text"]],
        "trained_tokens": len(reply),
        "masked_tokens": len(pair.prompt_ids),
    }
