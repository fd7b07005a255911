"""SHA-256, the one digest manifests, stores and published models are checked with."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    """Hex sha256 of the bytes of the file at ``path`` (read in blocks, not loaded whole).

    Raises ``OSError`` when the file cannot be read.
    """
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def hash_into(digest: Any, path: Path) -> None:
    """Feed the bytes of ``path`` into ``digest`` (a ``hashlib`` object) in blocks: a
    dataset of many files, or of files larger than memory, hashes as one stream."""
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
