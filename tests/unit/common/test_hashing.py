"""File digests match the digest of the same bytes, whatever the file's size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuneship.common.hashing import sha256_bytes, sha256_file

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 7])
def test_file_digest_is_the_digest_of_its_bytes(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
