"""A file written through common.atomic is the old one or the whole new one, never half."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tuneship.common.atomic import PART_SUFFIX, atomic_write_bytes, atomic_write_text, staged_file

pytestmark = pytest.mark.unit


def test_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new \xe2\x9c\x93")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_block_that_raises_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_file(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("the tool failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_the_temporary_path_is_hidden_fresh_and_can_be_linked_to(tmp_path: Path) -> None:
    source = tmp_path / "source.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "blobs" / "sha256-x.gguf"
    with staged_file(target) as temp:
        assert temp.parent == target.parent and not temp.exists()
        assert temp.name.startswith(".") and temp.name.endswith(PART_SUFFIX)
        os.link(source, temp)  # refuses an existing path
    assert target.read_bytes() == b"GGUF" and target.stat().st_ino == source.stat().st_ino


def test_a_block_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), staged_file(tmp_path / "never"):
        pass
    assert list(tmp_path.iterdir()) == []
