"""Preference pairs (``train.objective: dpo | orpo``): read, validate, deduplicate, split.

A pair is a prompt conversation (an optional system turn, then user and assistant
alternating, ending on a user turn) and two assistant replies to it, the ``chosen`` one
and the ``rejected`` one. Accepted record shapes (detected per record; a file holds one):

- explicit prompt, as TRL's conversational preference data:
  ``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``;
  ``chosen``/``rejected`` may also be one message object or a plain string;
- plain text: ``{"prompt": str, "chosen": str, "rejected": str}`` (the prompt is one
  user turn);
- implicit prompt, as Anthropic HH in messages form: ``{"chosen": [messages],
  "rejected": [messages]}``, two whole conversations that differ in their last
  (assistant) turn only;
- ShareGPT with a preference, as LLaMA-Factory writes it: ``{"conversations": [turns],
  "chosen": {"from": "gpt", "value": str}, "rejected": {...}}``.

Everything else is read as conversations are (``conversations.load_records``): files,
``save_to_disk`` directories and ``hf://datasets/…`` with their splits, ``dataset.columns``
(which may also map ``chosen`` and ``rejected``), errors naming ``file:line`` or the row,
``on_invalid``, dedupe and the seeded split. Where a stage needs
conversations from preference data (the export's held-out evaluation, SFT on the chosen
replies), a pair is its prompt followed by the chosen reply (``as_messages``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.conversations import (
    _SHAREGPT_ROLES,
    ConversationSet,
    Loaded,
    RecordError,
    _check_order,
    _message,
    load_conversations,
    load_records,
)
from tuneship.common.errors import InvalidInput
from tuneship.common.shapes import _renamed
from tuneship.common.spec import DatasetSpec, PipelineSpec

Message = dict[str, str]
KEYS = ("chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One validated pair and where it came from (``file:line``)."""

    prompt: list[Message]
    chosen: str
    rejected: str
    where: str

    def conversation(self, reply: str) -> list[Message]:
        """The prompt followed by ``reply`` as the assistant's turn."""
        return [*self.prompt, {"role": "assistant", "content": reply}]


class PreferenceSet(Loaded[PreferencePair]):
    """The train and eval preference pairs of a spec."""


def is_preference(record: Any) -> bool:
    """Whether a record is a preference pair (it has both ``chosen`` and ``rejected``)."""
    return isinstance(record, dict) and all(key in record for key in KEYS)


def as_messages(record: dict) -> list[Message]:
    """A preference record as a conversation: its prompt and the chosen reply."""
    pair = to_pair(record, "<record>")
    return pair.conversation(pair.chosen)


def load_training_data(
    spec: PipelineSpec, files: Mapping[str, Path] | None = None
) -> ConversationSet | PreferenceSet:
    """The spec's data as its ``train.objective`` reads it: conversations (sft) or
    preference pairs (dpo, orpo)."""
    if spec.train.objective == "sft":
        return load_conversations(spec.dataset, files)
    return load_preferences(spec.dataset, files)


def load_preferences(spec: DatasetSpec, files: Mapping[str, Path] | None = None) -> PreferenceSet:
    """Read ``spec.train`` (and ``spec.eval``) as preference pairs: validate, dedupe, split,
    from every source and with ``dataset.columns`` as ``load_conversations`` reads them.

    ``files`` as for ``load_conversations``. Raises ``InvalidInput`` naming the record
    (``on_invalid: error``), or the first record when the file holds conversations."""
    loaded = load_records(spec, files, _pair, _pair_key, "preference pairs")
    return PreferenceSet(**vars(loaded))


def _pair(record: Any, spec: DatasetSpec, where: str) -> tuple[str, PreferencePair]:
    if isinstance(record, dict):
        record = _renamed(record, spec.columns)
        if not any(key in record for key in KEYS):
            raise InvalidInput(
                "a conversation, not a preference pair: preference tuning (dpo, orpo) "
                "learns from a chosen and a rejected reply to the same prompt",
                where=where,
                hint="give records with prompt, chosen and rejected (see docs/training.md, "
                "'Preference tuning'), or use objective: sft for conversations",
            )
    return "preference", to_pair(record, where)


def _pair_key(pair: PreferencePair) -> str:
    return json.dumps([pair.prompt, pair.chosen, pair.rejected], ensure_ascii=False)


def to_pair(record: Any, where: str) -> PreferencePair:
    """Validate one preference record (``RecordError`` saying what is wrong)."""
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, not {json.dumps(record)[:40]}")
    for key in KEYS:
        if key not in record:
            raise RecordError(f"missing field '{key}': a preference pair has chosen and rejected")
    if "prompt" in record:
        prompt = _prompt(record["prompt"])
        chosen = _reply(record["chosen"], "chosen")
        rejected = _reply(record["rejected"], "rejected")
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise RecordError("field 'conversations' must be a list of turns")
        prompt = [_message(t, i, "from", "value", _SHAREGPT_ROLES) for i, t in enumerate(turns)]
        chosen = _reply(record["chosen"], "chosen", sharegpt=True)
        rejected = _reply(record["rejected"], "rejected", sharegpt=True)
    else:
        prompt, chosen, rejected = _implicit(record["chosen"], record["rejected"])
    if prompt and prompt[-1]["role"] == "assistant":
        raise RecordError(
            "the prompt ends with an assistant turn: it must end with the user turn that "
            "chosen and rejected answer"
        )
    _check_order([*prompt, {"role": "assistant", "content": chosen}])
    if chosen == rejected:
        raise RecordError("chosen and rejected are the same reply: there is nothing to prefer")
    return PreferencePair(prompt, chosen, rejected, where)


def _prompt(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, 0, "role", "content", None)]
    if not isinstance(value, list) or not value:
        raise RecordError("'prompt' must be a string or a non-empty list of messages")
    return [_message(m, i, "role", "content", None) for i, m in enumerate(value)]


def _reply(value: Any, name: str, sharegpt: bool = False) -> str:
    """The text of one assistant reply given as a string, a message or a one-message list."""
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"'{name}' is empty")
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(
                f"'{name}' holds {len(value)} messages: with a prompt, it is the one "
                "assistant reply (leave prompt out to give whole conversations)"
            )
        value = value[0]
    keys = ("from", "value", _SHAREGPT_ROLES) if sharegpt else ("role", "content", None)
    message = _message(value, 0, *keys)
    if message["role"] != "assistant":
        raise RecordError(f"'{name}' is a {message['role']} turn: it must be the assistant's reply")
    return message["content"]


def _implicit(chosen: Any, rejected: Any) -> tuple[list[Message], str, str]:
    """Two whole conversations that share every turn but the last (the replies)."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RecordError(
            "without 'prompt', chosen and rejected are whole conversations (message lists); "
            "with strings, add the 'prompt' they answer"
        )
    a = [_message(m, i, "role", "content", None) for i, m in enumerate(chosen)]
    b = [_message(m, i, "role", "content", None) for i, m in enumerate(rejected)]
    if len(a) != len(b) or a[:-1] != b[:-1]:
        turn = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        raise RecordError(
            f"chosen and rejected differ before their last turn (turn {turn}): they must "
            "share the prompt and differ only in the final assistant reply"
        )
    for name, turns in (("chosen", a), ("rejected", b)):
        if not turns or turns[-1]["role"] != "assistant":
            raise RecordError(f"the last turn of '{name}' must be the assistant's reply")
    return a[:-1], a[-1]["content"], b[-1]["content"]
