"""The artifact store port: what every stage needs from object storage, and nothing more."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from tuneship.common.errors import TuneshipError

CHUNK = 1 << 20


class CorruptArtifact(TuneshipError):
    """Bytes read back differ from the bytes written (sha256 or size mismatch).

    Not retryable as a task: the stored copy itself is bad (or changed under us), so
    the stage that produced it has to run again.
    """

    status = "DATA_LOSS"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. ``sha256`` is None where the store does not record it."""

    key: str
    size: int
    sha256: str | None = None


class ArtifactStore(Protocol):
    """Objects under string keys (see ``tuneship.common.layout``).

    Every write is all-or-nothing: a reader sees the old object, the new one, or none,
    never part of one. Errors: ``NotFound`` for a missing key, ``Unavailable`` when the
    store cannot be reached (retryable), ``CorruptArtifact`` when a download does not
    match its sha256 (the partial file is removed), ``InvalidInput`` for a bad key.
    """

    def describe(self) -> str:
        """Where this store is, for messages (``s3://bucket/prefix at host:port``)."""
        ...

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        """Upload ``path``; ``sha256`` (hex) is checked against the bytes sent when given."""
        ...

    def get_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        """Download to ``path`` (written beside it, renamed into place once verified).

        Verified against ``sha256`` when given, and against the hash recorded at upload
        when the store keeps one.
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store a small object (manifests, JSON documents)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""
        ...

    def read_chunks(self, key: str, offset: int = 0) -> Iterator[bytes]:
        """The object's bytes from ``offset`` on, in pieces of at most ``CHUNK``, read as
        they are asked for (a large file is never held whole). NotFound before the first
        piece when the object is missing; a reader that stops early releases the
        connection."""
        ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> ObjectInfo:
        """Size (and sha256 where recorded) of ``key``; NotFound if absent."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive), sorted by key."""
        ...

    def delete(self, key: str) -> bool:
        """Remove one object; False when there was none."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (a key ending in '/'); returns the count."""
        ...


class HashingReader:
    """Wraps a binary stream and hashes exactly the bytes handed out.

    When ``expected`` is given and the stream reaches ``size`` bytes with another
    digest, ``read`` raises ``CorruptArtifact``: the file changed after it was hashed,
    and an uploader that raises mid-stream never completes the object.
    """

    def __init__(self, stream: BinaryIO, size: int, expected: str | None, where: str):
        self.stream = stream
        self.size = size
        self.expected = expected
        self.where = where
        self.read_bytes = 0
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.digest.update(data)
        self.read_bytes += len(data)
        if self.expected and self.read_bytes >= self.size:
            self.check()
        return data

    def check(self) -> None:
        actual = self.digest.hexdigest()
        if self.read_bytes != self.size or (self.expected and actual != self.expected):
            raise CorruptArtifact(
                f"file changed while it was uploaded: read {self.read_bytes} of "
                f"{self.size} bytes, sha256 {actual[:12]}…, expected {str(self.expected)[:12]}…",
                where=self.where,
                hint="do not modify a stage's outputs while they are being committed",
            )
