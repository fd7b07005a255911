"""Served-model records: what every serving replica needs to re-publish a model.

One JSON document per model name at ``layout.served_model(name)``, written whole (the
store's puts are atomic) by the replica that published or deleted the model::

    {"format": 1, "kind": "served-model", "name": "pirate", "revision": 1733...,
     "deleted": false, "version": "3f2a9c0d11e2",        # name:latest points at it
     "gguf": {"key": "pipelines/p/stages/export/staging/.../model-q8_0.gguf",
              "sha256": "...", "size": 123, "export": "pipelines/p/stages/export/manifest.json"},
     "serve": {...the ServeSpec...}, "published": {"backend": ..., "template_mode": ...,
     "stop": [...], "parameters": {...}}, "origin": {...}, "written_at": "..."}

A deleted model leaves a tombstone (``deleted: true``, no ``gguf``/``serve``), so a
replica that was down when it was deleted still drops it. ``revision`` is nanoseconds
since the epoch and always above the revision it replaces, so it orders one key's
history even across skewed clocks.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tuneship.common import layout
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.hashing import sha256_bytes
from tuneship.common.spec import ServeSpec
from tuneship.common.store import ArtifactStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

RECORD_FORMAT = 1
RECORD_KIND = "served-model"


@dataclass(frozen=True)
class GgufSource:
    """Where the published GGUF is kept in the store, and its bytes' sha256."""

    key: str
    sha256: str
    size: int
    export: str = ""
    """The export manifest the GGUF was committed under (for tracing it back)."""

    @property
    def file_name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ServedModelRecord:
    """What every replica serves under one model name; a tombstone once deleted."""

    name: str
    version: str
    """The version ``name:latest`` points at (for a tombstone: the one deleted)."""
    revision: int = 0
    deleted: bool = False
    gguf: GgufSource | None = None
    serve: ServeSpec | None = None
    published: Mapping[str, Any] = field(default_factory=dict)
    """What the publishing replica resolved (backend, template mode, stop, parameters)."""
    origin: Mapping[str, str] = field(default_factory=dict)
    written_at: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes when what a replica would publish changes (not with the revision)."""
        serve = self.serve.model_dump(mode="json") if self.serve else None
        inputs = {"version": self.version, "deleted": self.deleted, "serve": serve,
                  "gguf": self.gguf.sha256 if self.gguf else None}  # fmt: skip
        return sha256_bytes(json.dumps(inputs, sort_keys=True).encode())

    def to_json(self) -> bytes:
        document = {
            "format": RECORD_FORMAT, "kind": RECORD_KIND, "name": self.name,
            "revision": self.revision, "deleted": self.deleted, "version": self.version,
            "gguf": vars(self.gguf) if self.gguf else None,
            "serve": self.serve.model_dump(mode="json") if self.serve else None,
            "published": dict(self.published), "origin": dict(self.origin),
            "written_at": self.written_at,
        }  # fmt: skip
        return json.dumps(document, indent=2, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> ServedModelRecord:
        """Parse a record; InvalidInput (at ``key``) when it is not a whole, valid one."""
        try:
            doc = json.loads(data)
            if doc.get("kind") != RECORD_KIND or doc.get("format") != RECORD_FORMAT:
                raise ValueError(f"not a {RECORD_KIND} record of format {RECORD_FORMAT}")
            deleted = bool(doc["deleted"])
            record = cls(
                name=str(doc["name"]), version=str(doc["version"]),
                revision=int(doc["revision"]), deleted=deleted,
                gguf=None if deleted else _gguf_source(doc["gguf"]),
                serve=None if deleted else ServeSpec.model_validate(doc["serve"]),
                published=dict(doc.get("published") or {}),
                origin=dict(doc.get("origin") or {}), written_at=str(doc.get("written_at", "")),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError,
                InvalidInput) as exc:  # fmt: skip
            raise InvalidInput(
                f"served-model record is unreadable: {exc}", where=key,
                hint="publish the model again (or delete the record) to replace it",
            ) from exc  # fmt: skip
        if layout.served_model_name(key) not in (None, record.name):
            raise InvalidInput(f"the record of {record.name!r} is stored at {key}", where=key)
        return record


class ServedModels:
    """The served-model records in the store."""

    def __init__(self, store: ArtifactStore, clock: Any = time.time_ns) -> None:
        self.store = store
        self.clock = clock

    def names(self) -> list[str]:
        found = (layout.served_model_name(o.key) for o in self.store.list(layout.SERVED_MODELS))
        return sorted(name for name in found if name)

    def read(self, name: str) -> ServedModelRecord | None:
        """The record of ``name``; None when there is none (or the name cannot have one)."""
        try:
            key = layout.served_model(name)
        except InvalidInput:
            return None
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            return None
        return ServedModelRecord.from_json(data, key)

    def write(self, record: ServedModelRecord) -> ServedModelRecord:
        """Store ``record`` with a revision above the one it replaces; returns it as stored."""
        try:
            previous = self.read(record.name)
        except InvalidInput:  # an unreadable record is replaced, not kept
            previous = None
        floor = previous.revision + 1 if previous else 0
        stored = replace(
            record, revision=max(self.clock(), floor),
            written_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )  # fmt: skip
        self.store.put_bytes(layout.served_model(record.name), stored.to_json())
        return stored


def _gguf_source(doc: Mapping[str, Any]) -> GgufSource:
    source = GgufSource(**doc)
    layout.check_key(source.key)  # a replica downloads it into its work dir
    if not _SHA256.match(source.sha256):
        raise ValueError(f"gguf.sha256 {source.sha256!r} is not a hex sha256")
    return source
