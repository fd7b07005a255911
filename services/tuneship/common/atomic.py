"""Writing a directory so that it is either complete or absent, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
