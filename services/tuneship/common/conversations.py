"""Conversation datasets: read, validate, deduplicate and split — for every stage.

Training, ``inspect-data``, the export's held-out evaluation and its importance matrix
all read conversations through this module, so a dataset that trains also exports.

Accepted shapes, detected from a file's first record unless the spec names one (a file
holds one shape):

- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}]}``
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}]}``
- ``prompt_completion``: ``{"prompt": str, "completion": str}`` (or lists of messages)
- ``alpaca``: ``{"instruction": str, "input": str (optional), "output": str}``; the
  input follows the instruction after a blank line, as Alpaca's own prompts put it
- ``prompt_response``: one of the single-turn pairs in ``shapes.PROMPT_RESPONSE`` (such as
  ``question``/``answer``); a record with two of them is ambiguous
- ``preference``: pairs with ``chosen`` and ``rejected`` (``tuneship.common.preferences``),
  read here as the prompt followed by the chosen reply (SFT on the chosen replies, and
  the export's evaluation of a dpo/orpo pipeline)

``alpaca`` and ``prompt_response`` records may have a ``system`` string. Other column
names are mapped with ``dataset.columns`` (tuneship's name → the dataset's).

Files are JSONL, JSON (a list of records) or Parquet, UTF-8 with or without a byte-order
mark; directories written by ``save_to_disk`` and ``hf://datasets/…`` are read through
``common.datasources``. Every problem names the file and line (JSONL), index (JSON) or
row (Parquet, Arrow) and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tuneship.common import datasources
from tuneship.common.datasources import DataSource
from tuneship.common.errors import InvalidInput
from tuneship.common.hashing import hash_into
from tuneship.common.shapes import _SHAREGPT_ROLES as _SHAREGPT_ROLES
from tuneship.common.shapes import ROLES as ROLES
from tuneship.common.shapes import TOOL_KEYS as TOOL_KEYS
from tuneship.common.shapes import TOOL_ROLES as TOOL_ROLES
from tuneship.common.shapes import Message as Message
from tuneship.common.shapes import RecordError as RecordError
from tuneship.common.shapes import _check_order as _check_order
from tuneship.common.shapes import _convert
from tuneship.common.shapes import _message as _message
from tuneship.common.shapes import to_messages as to_messages
from tuneship.common.spec import DatasetSpec

# The names imported "as" themselves from shapes are re-exported: record shapes were
# read here first, and common.preferences builds on them.
_T = TypeVar("_T")


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
class Loaded(Generic[_T]):
    """What ``load_records`` read: items of one kind, with what was dropped and the hash."""

    train: list[_T]
    eval: list[_T]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0
    sha256: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    """Where train and eval were read, resolved (``hf://datasets/org/name@<commit>:train``)."""
    revision: str | None = None
    """The hub commit the dataset resolved to, for ``hf://datasets/…``."""


class ConversationSet(Loaded[Conversation]):
    """The train and eval conversations of a spec."""


def load_conversations(
    spec: DatasetSpec, files: Mapping[str, Path] | None = None
) -> ConversationSet:
    """Read ``spec.train`` (and ``spec.eval``), validate, dedupe and split.

    ``files`` (``{"train": path, "eval": path}``) says where the bytes are when a
    worker fetched them into a work directory: errors and skipped records still name
    the location the user gave in the spec (``train.jsonl:4``, ``store:…``, ``s3://…``),
    or the commit a hub dataset resolved to. The held-out set is ``spec.eval``, else the
    dataset's own held-out split (``datasources.held_out_split``), else a seeded split
    of train, so every stage that loads the same spec gets the same held-out
    conversations. Raises ``InvalidInput`` naming the record when ``on_invalid`` is
    ``error`` or when nothing valid remains; ``NotFound`` when a file does not exist.
    """
    loaded = load_records(spec, files, _conversation, _conversation_key, "conversations")
    return ConversationSet(**vars(loaded))


Convert = Callable[[Any, DatasetSpec, str], tuple[str, _T]]
"""(record, spec, where) -> (the record's shape, the item); ``RecordError`` if invalid."""


def load_records(
    spec: DatasetSpec,
    files: Mapping[str, Path] | None,
    convert: Convert[_T],
    key: Callable[[_T], str],
    what: str,
) -> Loaded[_T]:
    """The dataset of ``spec`` read, validated, deduplicated (by ``key``) and split as
    ``load_conversations`` describes, each record made an item by ``convert``; ``what``
    names the items in errors (``conversations``, ``preference pairs``)."""
    files = files or {}
    reading = _Reading(spec, convert)
    source = _open(spec.train, files.get("train"), "dataset.train")
    train = reading.split(source, spec.split, "dataset.split", "train")
    evaluation: list[_T] = []
    if spec.eval:
        eval_source = _open(spec.eval, files.get("eval"), "dataset.eval")
        held_out = datasources.held_out_split(eval_source, spec.eval_split, "dataset.eval")
        evaluation = reading.split(eval_source, held_out or "train", "dataset.eval", "eval")
    else:
        held_out = datasources.held_out_split(source, spec.eval_split, "dataset.eval_split")
        if held_out is not None:
            evaluation = reading.split(source, held_out, "dataset.eval_split", "eval")
    train, duplicates = _dedupe(train, key) if spec.dedupe else (train, 0)
    if not spec.eval and held_out is None:
        train, evaluation = _split(train, spec.eval_fraction, spec.seed)
    if not train:
        raise InvalidInput(
            f"no valid training {what}",
            where=spec.train,
            hint="every record was invalid or skipped; see the skipped list",
        )
    return Loaded(
        train, evaluation, reading.skipped, duplicates, reading.digest.hexdigest(),
        reading.sources, source.revision,
    )  # fmt: skip


def _conversation(record: Any, spec: DatasetSpec, where: str) -> tuple[str, Conversation]:
    shape, messages = _convert(record, spec.format, spec.columns)
    return shape, Conversation(messages, where)


def _conversation_key(conversation: Conversation) -> str:
    return json.dumps(conversation.messages, sort_keys=True, ensure_ascii=False)


def read_conversations(path: Path, shape: str = "auto") -> list[Conversation]:
    """Every conversation of one file (any accepted format); the first bad record raises
    ``InvalidInput`` with its location. For commands given a file rather than a spec."""
    spec = DatasetSpec(train=str(path), format=shape)
    source = datasources.open_source(path, str(path), "--data")
    conversations = _Reading(spec, _conversation).split(source, "train", "--data", "train")
    if not conversations:
        raise InvalidInput(
            "no conversations in the file",
            where=str(path),
            hint="one conversation per line (JSONL), a JSON list, or Parquet rows",
        )
    return conversations


def _open(location: str, fetched: Path | None, field: str) -> DataSource:
    """The dataset at ``location`` (or its fetched copy): a hub location not fetched by
    a worker is read from huggingface_hub's cache, downloading it if need be."""
    if fetched is None and location.startswith(datasources.HUB_PREFIX):
        path, commit = datasources.hub_snapshot(location, field)
        repo, _ = datasources.parse_hub(location, field)
        hub = f"{datasources.HUB_PREFIX}{repo}@{commit}"
        return datasources.open_source(path, location, field, hub=hub)
    if fetched is None and location.startswith("hf://"):
        raise InvalidInput(
            f"{location!r}: a dataset on the hub is hf://datasets/<org>/<name>",
            where=field, hint="hf://org/name (no datasets/) names a model",
        )  # fmt: skip
    return datasources.open_source(fetched or Path(location), location, field)


class _Reading(Generic[_T]):
    """The reading of one spec's dataset: what was skipped, the sources and their hash."""

    def __init__(self, spec: DatasetSpec, convert: Convert[_T]) -> None:
        self.spec = spec
        self.convert = convert
        self.skipped: list[Skipped] = []
        self.digest = hashlib.sha256()
        self.sources: dict[str, str] = {}

    def split(self, source: DataSource, split: str, field: str, role: str) -> list[_T]:
        """The valid items of ``split`` of ``source`` (read as ``role``)."""
        named = source.label if source.layout == "file" else f"{source.label}:{split}"
        self.sources[role] = named
        valid = []
        shapes = _OneShape(self.spec.format)
        for where, record in _split_records(source, split, field, self.digest):
            try:
                if isinstance(record, RecordError):
                    raise record
                shape, item = self.convert(record, self.spec, where)
                shapes.check(shape, where)
                valid.append(item)
            except RecordError as exc:
                if self.spec.on_invalid == "error":
                    raise InvalidInput(
                        str(exc),
                        where=where,
                        hint="fix the record, or set dataset.on_invalid: skip to leave it out",
                    ) from exc
                self.skipped.append(Skipped(where, str(exc)))
        return valid


def _read_records(
    path: Path, label: str, spec_field: str, digest: Any
) -> Iterator[tuple[str, Any]]:
    """(location, record or RecordError) for every record of the dataset at ``path`` (a
    file, or the train split of a save_to_disk directory or stored hub copy), which the
    user knows as ``label`` (spec field ``spec_field``); its bytes go into ``digest``.
    ``NotFound`` for a missing file, ``InvalidInput`` for one with no records."""
    source = datasources.open_source(path, label, spec_field)
    yield from _split_records(source, "train", spec_field, digest)


def _split_records(
    source: DataSource, split: str, field: str, digest: Any
) -> Iterator[tuple[str, Any]]:
    """The records of ``split`` of ``source``: table rows are numbered across the
    split's files (``…:train:row 12``), as ``datasets`` indexes them."""
    records = 0
    for part in datasources.split_parts(source, split, field):
        hash_into(digest, part.path)
        if not part.table:
            for item in _records(part.path, part.where):
                records += 1
                yield item
            continue
        for record in datasources.read_table(part.path, part.where):
            yield f"{part.where}:row {records}", record
            records += 1
    if records == 0:
        raise InvalidInput(
            "the file is empty: it holds no records",
            where=source.label if source.layout == "file" else f"{source.label}:{split}",
            hint="write one conversation per line (JSONL), a JSON list, or Parquet rows",
        )


class _OneShape:
    """With ``format: auto``, the first record's shape is the file's: a record of another
    shape is refused, as files that mix shapes are usually two files pasted together."""

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.first: tuple[str, str] | None = None

    def check(self, shape: str, where: str) -> None:
        """Refuse a record (valid in itself) of ``shape`` when that is not the file's."""
        if self.shape != "auto":
            return
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


def _dedupe(items: list[_T], key: Callable[[_T], str]) -> tuple[list[_T], int]:
    seen: set[str] = set()
    unique = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            unique.append(item)
    return unique, len(items) - len(unique)


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
