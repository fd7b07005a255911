"""Artifact store wrappers for tests: record what a caller did, fail where a test says.

They wrap a real store (a ``LocalStore`` or ``S3Store``), so everything that does
happen, happens for real; only the injected failure is made up.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.common.errors import Unavailable
from tuneship.common.store.base import ArtifactStore, ObjectInfo


@dataclass
class FaultyStore:
    """Forwards to ``inner``; records ``(operation, key)`` for every call, and raises
    ``Unavailable`` instead of forwarding when ``fail(operation, key)`` is true
    (like a store that went away halfway through a commit)."""

    inner: ArtifactStore
    fail: Callable[[str, str], bool] = lambda operation, key: False
    calls: builtins.list[tuple[str, str]] = field(default_factory=list)

    def _enter(self, operation: str, key: str) -> None:
        self.calls.append((operation, key))
        if self.fail(operation, key):
            raise Unavailable(f"injected failure: {operation} {key}", where=key)

    def describe(self) -> str:
        return f"faulty {self.inner.describe()}"

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        self._enter("put_file", key)
        return self.inner.put_file(key, path, sha256=sha256)

    def get_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        self._enter("get_file", key)
        return self.inner.get_file(key, path, sha256=sha256)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        self._enter("put_bytes", key)
        return self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        self._enter("get_bytes", key)
        return self.inner.get_bytes(key)

    def read_chunks(self, key: str, offset: int = 0) -> Iterator[bytes]:
        self._enter("read_chunks", key)
        return self.inner.read_chunks(key, offset)

    def exists(self, key: str) -> bool:
        self._enter("exists", key)
        return self.inner.exists(key)

    def stat(self, key: str) -> ObjectInfo:
        self._enter("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self._enter("list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> bool:
        self._enter("delete", key)
        return self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._enter("delete_prefix", prefix)
        return self.inner.delete_prefix(prefix)

    def operations(self, name: str) -> builtins.list[str]:
        """Keys of the calls of one operation, in order."""
        return [key for operation, key in self.calls if operation == name]
