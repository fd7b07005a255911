"""Writing a file or a directory so that it is either complete or absent, never half-written.

Work happens under a hidden name beside the target (same filesystem, so the final
``os.replace`` is atomic); a reader of the target sees the old version or the new one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART_SUFFIX = ".part"
"""Ends the hidden name of a file being written (``.<name>.<random>.part``): not a result yet."""


def replace_dir(new: Path, dest: Path) -> None:
    """Put the directory ``new`` at ``dest``, replacing what was there (same filesystem)."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "d")
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)


@contextmanager
def staged_dir(out: Path, suffix: str = "") -> Iterator[Path]:
    """Yield an empty directory beside ``out``; it becomes ``out`` when the block ends
    normally and is removed when the block raises (``out`` is then left as it was)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    work.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    replace_dir(work, out)


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a path beside ``target`` that does not exist yet, for the caller (or a tool
    it runs) to write. The file becomes ``target`` when the block ends normally, and is
    removed when the block raises (``target`` is then left as it was). A block that ends
    normally without writing the file raises ``FileNotFoundError``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A random name, not created here: tools may refuse an existing output (os.link does),
    # and two writers of the same target must not share a temporary file.
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PART_SUFFIX}")
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old bytes or all of the new ones.

    The bytes are flushed to disk before the rename, so a crash cannot leave ``path``
    renamed but empty.
    """
    with staged_file(path) as temp, temp.open("wb") as writer:
        writer.write(data)
        writer.flush()
        os.fsync(writer.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
