"""A directory as an artifact store: embedded mode and tests.

Writes go to a temporary file beside the target and are renamed into place, so a
reader never sees half an object. The directory keeps no metadata: sha256 checks on
download use the hash the caller passes (the manifest's).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneship.common import layout
from tuneship.common.atomic import PART_SUFFIX, atomic_write_bytes, staged_file
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.hashing import sha256_bytes
from tuneship.common.store.base import CHUNK, CorruptArtifact, ObjectInfo


def _copy_hashing(src: Path, dst: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as reader, dst.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return size, digest.hexdigest()


def _chunks(path: Path, offset: int) -> Iterator[bytes]:
    with path.open("rb") as reader:
        reader.seek(offset)
        while piece := reader.read(CHUNK):
            yield piece


class LocalStore:
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return f"local store {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / layout.check_key(key)

    def _write_path(self, key: str) -> Path:
        return self.root / layout.check_write_key(key)

    def _where(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _require(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            # A root that does not exist yet is an empty store, not an outage.
            raise NotFound(f"no object {key!r} in {self.describe()}", where=self._where(key))
        return path

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """A write the filesystem refuses (read-only, permissions, full, a file where a
        directory should be) as an error that names the store and what to check."""
        try:
            yield
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot write {key!r} to {self.describe()}: {exc.strerror or exc}",
                where=self._where(key),
                hint="the store directory must be writable and have free space "
                "(TUNESHIP_STORE, or --data-dir for tuneship run)",
            ) from exc

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        target = self._write_path(key)
        with self._writing(key), staged_file(target) as temp:
            size, actual = _copy_hashing(Path(path), temp)
            if sha256 and actual != sha256:
                raise CorruptArtifact(
                    f"{path} changed after it was hashed (sha256 {actual[:12]}…, "
                    f"expected {sha256[:12]}…)",
                    where=self._where(key),
                    hint="do not modify a stage's outputs while they are being committed",
                )
        return ObjectInfo(key, size, actual)

    def get_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        source = self._require(key)
        dest = Path(path)
        with staged_file(dest) as temp:
            size, actual = _copy_hashing(source, temp)
            if sha256 and actual != sha256:
                raise CorruptArtifact(
                    f"{key} read back with sha256 {actual[:12]}…, expected {sha256[:12]}…",
                    where=self._where(key),
                    hint="the stored copy is damaged; rerun the stage that produced it",
                )
        return ObjectInfo(key, size, actual)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with self._writing(key):
            atomic_write_bytes(self._write_path(key), data)
        return ObjectInfo(key, len(data), sha256_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        return self._require(key).read_bytes()

    def read_chunks(self, key: str, offset: int = 0) -> Iterator[bytes]:
        source = self._require(key)
        return _chunks(source, offset)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, self._require(key).stat().st_size)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root / layout.check_prefix(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(PART_SUFFIX):
                    continue  # an upload in flight, not an object
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, full.stat().st_size))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink(missing_ok=True)
        return True

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise InvalidInput("refusing to delete the whole store", where="prefix")
        base = self.root / layout.check_prefix(prefix)
        count = len(self.list(prefix))
        shutil.rmtree(base, ignore_errors=True)
        return count
