"""Manifests: how a set of files in the artifact store becomes one committed artifact.

A writer uploads its files under a prefix nobody reads yet (a stage attempt's
staging prefix, a checkpoint's step prefix, an input's content-addressed prefix),
then writes ``manifest.json`` LAST. A manifest lists every file with its size and
sha256, the manifests it was made from, the tool versions and the hash of the spec
section that made it. Readers only ever start from a manifest, so files without one
are invisible: an interrupted commit leaves nothing that looks committed.

The cache key of a stage (its spec section + input manifests + tool versions) indexes
committed manifests, so a rerun or retry of the same work is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneship.common import layout
from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.hashing import sha256_bytes, sha256_file
from tuneship.common.store.base import CorruptArtifact

FORMAT = 1


@dataclass(frozen=True)
class FileEntry:
    """One committed file: ``name`` is its path relative to the manifest's root."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class InputRef:
    """A manifest this one was made from: its key and the sha256 of its bytes."""

    key: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A committed artifact. ``key`` and ``digest`` (sha256 of the manifest's bytes) are
    where it was read from or written to; they are not part of the document."""

    kind: str
    root: str
    files: tuple[FileEntry, ...]
    inputs: tuple[InputRef, ...] = ()
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    spec_hash: str = ""
    cache_key: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    key: str = field(default="", compare=False)
    digest: str = field(default="", compare=False)

    @property
    def ref(self) -> InputRef:
        """How a later stage names this manifest among its inputs."""
        if not self.key or not self.digest:
            raise FailedPrecondition("manifest has not been written or read yet")
        return InputRef(self.key, self.digest)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry:
        """The entry called ``name``; NotFound-like InvalidInput when there is none."""
        for entry in self.files:
            if entry.name == name:
                return entry
        raise InvalidInput(
            f"no file {name!r} in {self.kind} manifest",
            where=self.key or self.root,
            hint=f"it has: {', '.join(f.name for f in self.files)}",
        )

    def file_key(self, name: str) -> str:
        return layout.join(self.root, name)

    def to_json(self) -> bytes:
        document = {
            "format": FORMAT,
            "kind": self.kind,
            "root": self.root,
            "files": [vars(f) for f in self.files],
            "inputs": [vars(i) for i in self.inputs],
            "tool_versions": dict(sorted(self.tool_versions.items())),
            "spec_hash": self.spec_hash,
            "cache_key": self.cache_key,
            "labels": dict(sorted(self.labels.items())),
            "created": self.created,
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, key: str = "") -> Manifest:
        """Parse a manifest; CorruptArtifact when it is not one, FailedPrecondition when
        it was written by a newer tuneship."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise FailedPrecondition(
                    f"manifest format {doc.get('format')!r}, this tuneship reads {FORMAT}",
                    where=key,
                    hint="upgrade tuneship",
                )
            return cls(
                kind=str(doc["kind"]),
                root=layout.check_prefix(str(doc["root"])),
                files=tuple(
                    FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"]))
                    for f in doc["files"]
                ),
                inputs=tuple(InputRef(str(i["key"]), str(i["sha256"])) for i in doc["inputs"]),
                tool_versions={str(k): str(v) for k, v in doc["tool_versions"].items()},
                spec_hash=str(doc["spec_hash"]),
                cache_key=str(doc["cache_key"]),
                labels={str(k): str(v) for k, v in doc["labels"].items()},
                created=str(doc["created"]),
                key=key,
                digest=sha256_bytes(data),
            )
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
            raise CorruptArtifact(
                f"not a tuneship manifest: {type(exc).__name__}: {exc}", where=key
            ) from exc


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def spec_hash(section: Mapping[str, Any] | None) -> str:
    """Stable sha256 of a spec section (a JSON-able mapping; key order does not matter)."""
    return sha256_bytes(_canonical(dict(section or {})))


def cache_key(
    spec_section: Mapping[str, Any] | None,
    inputs: Sequence[InputRef | Manifest],
    tool_versions: Mapping[str, str],
    *,
    stage: str,
) -> str:
    """The identity of a stage's work: the same stage with the same spec section, input
    manifests (by content) and tool versions gives the same key, so finished work is
    reused. ``stage`` keeps two stages with equal sections and inputs apart."""
    refs = [i.ref if isinstance(i, Manifest) else i for i in inputs]
    return sha256_bytes(
        _canonical(
            {
                "stage": stage,
                "spec": spec_hash(spec_section),
                "inputs": sorted(r.sha256 for r in refs),
                "tools": dict(tool_versions),
            }
        )
    )


def scan_dir(local: Path) -> tuple[FileEntry, ...]:
    """Every file under ``local`` (or ``local`` itself, when it is a file), hashed."""
    local = Path(local)
    if local.is_file():
        return (FileEntry(layout.check_key(local.name), local.stat().st_size, sha256_file(local)),)
    if not local.is_dir():
        raise InvalidInput(f"{local} does not exist", where=str(local))
    entries = []
    for dirpath, _dirs, files in os.walk(local):
        for name in files:
            path = Path(dirpath) / name
            relative = path.relative_to(local).as_posix()
            entries.append(
                FileEntry(layout.check_key(relative), path.stat().st_size, sha256_file(path))
            )
    if not entries:
        raise InvalidInput(f"{local} holds no files to commit", where=str(local))
    return tuple(sorted(entries, key=lambda e: e.name))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
