"""A Hugging Face hub cache written on the spot, for reading ``hf://datasets/…`` offline.

The layout is the one huggingface_hub documents and reads itself (``blobs/<sha256>``,
``snapshots/<commit>/<path>`` linking to the blob, ``refs/<branch>`` holding the
commit), so with ``HF_HUB_OFFLINE`` set its real ``snapshot_download`` resolves a branch
or a commit to the snapshot without network.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def cache_dataset(
    cache: Path, repo: str, files: Mapping[str, bytes], *, refs: tuple[str, ...] = ("main",)
) -> str:
    """Put a dataset repository's ``files`` (path in the repo → content) into ``cache``
    as one commit that ``refs`` point at; returns the commit (40 hex digits)."""
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    root = cache / f"datasets--{repo.replace('/', '--')}"
    for name, content in files.items():
        blob = root / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return commit


@contextmanager
def offline_hub(cache: Path) -> Iterator[None]:
    """huggingface_hub offline and reading ``cache`` while the block runs (in this
    process: its settings are read once at import, so they are set on its module)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = True, str(cache)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved
