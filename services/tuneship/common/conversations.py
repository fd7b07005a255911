"""Conversation datasets: read, validate, deduplicate and split — for every stage.

Training, ``inspect-data``, the export's held-out evaluation and its importance matrix
all read conversations through this module, so a dataset that trains also exports.

Accepted shapes, detected from a file's first record unless the spec names one (a file
holds one shape):

- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}``
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}]}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}`` (or lists of messages)
- ``preference``: pairs with ``chosen`` and ``rejected`` (``tuneship.common.preferences``),
  read here as the prompt followed by the chosen reply (SFT on the chosen replies, and
  the export's evaluation of a dpo/orpo pipeline)

Files are JSONL, JSON (a list of records) or Parquet, UTF-8 with or without a byte-order
mark. Every problem names the file and line (JSONL), index (JSON) or row (Parquet) and
what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.spec import DatasetSpec

Message = dict[str, str]
_T = TypeVar("_T")

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class Conversation:
    """One validated conversation and where it came from (``file:line``)."""

    messages: list[Message]
    where: str


@dataclass(frozen=True)
class Skipped:
    """A record left out under ``on_invalid: skip``, and why."""

    where: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason}


@dataclass
class ConversationSet:
    """The train and eval conversations of a spec, with what was dropped and the hash."""

    train: list[Conversation]
    eval: list[Conversation]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0
    sha256: str = ""


class RecordError(ValueError):
    """A record is invalid; the message says what is wrong."""


def load_conversations(
    spec: DatasetSpec, files: Mapping[str, Path] | None = None
) -> ConversationSet:
    """Read ``spec.train`` (and ``spec.eval``), validate, dedupe and split.

    ``files`` (``{"train": path, "eval": path}``) says where the bytes are when a
    worker fetched them into a work directory: errors and skipped records still name
    the location the user gave in the spec (``train.jsonl:4``, ``store:…``, ``s3://…``).
    The split is seeded, so every stage that loads the same spec gets the same held-out
    conversations. Raises ``InvalidInput`` naming the record when ``on_invalid`` is
    ``error`` or when nothing valid remains; ``NotFound`` when a file does not exist.
    """
    files = files or {}
    digest = hashlib.sha256()
    skipped: list[Skipped] = []
    train = _read_valid(
        files.get("train", Path(spec.train)), spec.train, "dataset.train", spec, skipped, digest
    )
    evaluation = []
    if spec.eval:
        source = files.get("eval", Path(spec.eval))
        evaluation = _read_valid(source, spec.eval, "dataset.eval", spec, skipped, digest)
    train, duplicates = _dedupe(train) if spec.dedupe else (train, 0)
    if not spec.eval:
        train, evaluation = _split(train, spec.eval_fraction, spec.seed)
    if not train:
        raise InvalidInput(
            "no valid training conversations",
            where=spec.train,
            hint="every record was invalid or skipped; see the skipped list",
        )
    return ConversationSet(train, evaluation, skipped, duplicates, digest.hexdigest())


def read_conversations(path: Path, shape: str = "auto") -> list[Conversation]:
    """Every conversation of one file (any accepted format); the first bad record raises
    ``InvalidInput`` with its location. For commands given a file rather than a spec."""
    spec = DatasetSpec(train=str(path), format=shape)
    conversations = _read_valid(path, str(path), "--data", spec, [], hashlib.sha256())
    if not conversations:
        raise InvalidInput(
            "no conversations in the file",
            where=str(path),
            hint="one conversation per line (JSONL), a JSON list, or Parquet rows",
        )
    return conversations


def _read_valid(
    path: Path, label: str, spec_field: str, spec: DatasetSpec, skipped: list[Skipped], digest: Any
) -> list[Conversation]:
    valid = []
    shapes = _OneShape(spec.format)
    for where, record in _read_records(path, label, spec_field, digest):
        try:
            if isinstance(record, RecordError):
                raise record
            messages = to_messages(record, spec.format)
            shapes.check(record, where)
            valid.append(Conversation(messages, where))
        except RecordError as exc:
            if spec.on_invalid == "error":
                raise InvalidInput(
                    str(exc),
                    where=where,
                    hint="fix the record, or set dataset.on_invalid: skip to leave it out",
                ) from exc
            skipped.append(Skipped(where, str(exc)))
    return valid


def _read_records(
    path: Path, label: str, spec_field: str, digest: Any
) -> Iterator[tuple[str, Any]]:
    """(location, record or RecordError) for every record of the dataset file ``path``,
    which the user knows as ``label`` (spec field ``spec_field``); its bytes go into
    ``digest``. ``NotFound`` for a missing file, ``InvalidInput`` for one with no records."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise NotFound(
            f"the dataset {label} {what}",
            where=spec_field,
            hint="give a JSONL, JSON or Parquet file",
        )
    digest.update(path.read_bytes())
    records = 0
    for item in _records(path, label):
        records += 1
        yield item
    if records == 0:
        raise InvalidInput(
            "the file is empty: it holds no records",
            where=label,
            hint="write one conversation per line (JSONL), a JSON list, or Parquet rows",
        )


class _OneShape:
    """With ``format: auto``, the first record's shape is the file's: a record of another
    shape is refused, as files that mix shapes are usually two files pasted together."""

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.first: tuple[str, str] | None = None

    def check(self, record: dict, where: str) -> None:
        """Refuse ``record`` (valid in itself) when its shape is not the file's."""
        if self.shape != "auto":
            return
        shape = _detect(record)
        if self.first is None:
            self.first = (shape, where)
        elif shape != self.first[0]:
            raise RecordError(
                f"a {shape} record in a file of {self.first[0]} records (the first, at "
                f"{self.first[1]}): one file holds one format; convert the records to one "
                "shape, or split the file"
            )


def _records(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    """(location, record or RecordError) for every record of a file; locations start
    with ``label``, the name the user knows the file by."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises its own error types for bad files
            raise InvalidInput(
                f"not a readable Parquet file: {exc}",
                where=label,
                hint="write it with pyarrow or pandas (to_parquet), or give JSONL instead",
            ) from exc
        for row, record in enumerate(rows):
            yield f"{label}:row {row}", record
    elif suffix == ".json":
        try:
            # utf-8-sig: a byte-order mark (Windows editors write one) is not content.
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(
                f"not a valid UTF-8 JSON file: {exc}", where=label,
                hint="a .json dataset is a JSON list of records; for one record per line, "
                "name the file .jsonl",
            ) from exc  # fmt: skip
        if not isinstance(data, list):
            raise InvalidInput(
                f"a .json dataset is a list of records, not a JSON {type(data).__name__}",
                where=label,
                hint="wrap the records in [ ] as a JSON list of records, or write one per "
                "line in a .jsonl file",
            )
        for index, record in enumerate(data):
            yield f"{label}:[{index}]", record
    else:
        yield from _jsonl_records(path, label)


def _jsonl_records(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{label}:{number}"
            try:
                # A byte-order mark (Windows editors write one) opens the file, not a record.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield where, RecordError(f"invalid UTF-8 at byte {exc.start} of the line")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RecordError(f"not valid JSON: {exc.msg} (column {exc.colno})")


def to_messages(record: Any, shape: str = "auto") -> list[Message]:
    """Convert one record to validated OpenAI-style messages (``RecordError`` if invalid)."""
    if isinstance(record, list):
        raise RecordError(
            "a record is a JSON object, not a list: a .jsonl file has one object per line "
            "(a JSON list of records belongs in a .json file)"
        )
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, not {json.dumps(record)[:40]}")
    if shape == "auto":
        shape = _detect(record)
    if shape == "preference":
        from tuneship.common.preferences import as_messages  # it builds on this module

        return as_messages(record)
    if shape == "messages":
        messages = _field(record, "messages", list)
        converted = [_message(m, i, "role", "content", None) for i, m in enumerate(messages)]
    elif shape == "sharegpt":
        turns = _field(record, "conversations", list)
        converted = [_message(t, i, "from", "value", _SHAREGPT_ROLES) for i, t in enumerate(turns)]
    else:
        converted = _prompt_completion(record)
    _check_order(converted)
    return converted


def _detect(record: dict) -> str:
    if "chosen" in record and "rejected" in record:
        return "preference"  # trained on by dpo/orpo; as a conversation: prompt + chosen
    for key, shape in (("messages", "messages"), ("conversations", "sharegpt")):
        if key in record:
            return shape
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    raise RecordError(
        "missing field: expected 'messages', 'conversations' (ShareGPT) or 'prompt'/'completion'"
    )


def _field(record: dict, name: str, kind: type) -> Any:
    if name not in record:
        raise RecordError(f"missing field '{name}'")
    if not isinstance(record[name], kind):
        raise RecordError(f"field '{name}' must be a {kind.__name__}")
    return record[name]


TOOL_ROLES = ("tool", "function", "ipython")
TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
"""How OpenAI-style and Llama-style records carry tool calls and their results."""


def _message(item: Any, index: int, role_key: str, text_key: str, names: dict | None) -> Message:
    if not isinstance(item, dict):
        raise RecordError(f"turn {index} is not an object")
    role = _field(item, role_key, str) if role_key in item else None
    if role is None:
        raise RecordError(f"turn {index}: missing field '{role_key}'")
    if role in TOOL_ROLES or any(key in item for key in TOOL_KEYS):
        raise RecordError(
            f"turn {index}: tool calls are not supported (yet); train on conversations "
            "without tool calls and tool results, or set dataset.on_invalid: skip"
        )
    mapped = names.get(role) if names is not None else (role if role in ROLES else None)
    if mapped is None:
        known = ", ".join(names or ROLES)
        raise RecordError(f"turn {index}: unknown role {role!r} (expected one of {known})")
    if text_key not in item:
        raise RecordError(f"turn {index}: missing field '{text_key}'")
    content = item[text_key]
    if not isinstance(content, str):
        raise RecordError(f"turn {index}: '{text_key}' must be a string")
    if not content.strip():
        raise RecordError(f"turn {index} ({mapped}): empty content")
    return {"role": mapped, "content": content}


def _prompt_completion(record: dict) -> list[Message]:
    prompt, completion = record.get("prompt"), record.get("completion")
    for name, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise RecordError(f"missing field '{name}'")
    if isinstance(prompt, list) and isinstance(completion, list):
        turns = [*prompt, *completion]
        return [_message(m, i, "role", "content", None) for i, m in enumerate(turns)]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise RecordError("'prompt' and 'completion' must both be strings or both message lists")
    return [
        _message({"role": "user", "content": prompt}, 0, "role", "content", None),
        _message({"role": "assistant", "content": completion}, 1, "role", "content", None),
    ]


def _check_order(messages: list[Message]) -> None:
    """An optional first system turn, then user/assistant alternating, ending on assistant."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in turns):
        raise RecordError("no assistant turn: nothing to learn from this conversation")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + len(messages) - len(turns)
            raise RecordError(
                f"turns out of order: turn {position} is {message['role']}, expected {expected} "
                "(a first system turn, then user and assistant alternating)"
            )
    if turns[-1]["role"] != "assistant":
        raise RecordError("turns out of order: the last turn must be the assistant's")


def _dedupe(conversations: list[Conversation]) -> tuple[list[Conversation], int]:
    seen: set[str] = set()
    unique = []
    for conversation in conversations:
        key = json.dumps(conversation.messages, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            unique.append(conversation)
    return unique, len(conversations) - len(unique)


def _split(conversations: list[_T], fraction: float, seed: int) -> tuple[list[_T], list[_T]]:
    """A seeded split: the same data and seed always give the same eval set."""
    count = round(len(conversations) * fraction)
    if fraction > 0 and len(conversations) >= 2:
        count = max(count, 1)
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    train = [c for i, c in enumerate(conversations) if i not in held]
    return train, [c for i, c in enumerate(conversations) if i in held]
