"""Timestamps as the API server writes them (RFC 3339, UTC, whole seconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def timestamp(offset_s: float = 0.0) -> str:
    """Now (plus ``offset_s``) as ``2025-01-01T00:00:00Z``."""
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(text: str) -> datetime:
    """A timestamp written by :func:`timestamp` (or any RFC 3339 ``Z`` time)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_since(text: str) -> float:
    """Seconds elapsed since an RFC 3339 timestamp."""
    return (datetime.now(UTC) - parse(text)).total_seconds()
