"""Quantities as people read them in messages and pages."""

from __future__ import annotations

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def human_size(size: int) -> str:
    """``size`` bytes as people read it: ``1.5 GiB``, ``312 bytes``."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
