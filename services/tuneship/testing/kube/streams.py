"""Long-running responses: watches and followed pod logs, as chunked HTTP streams.

A watch sends one JSON event per line (``{"type": ..., "object": ...}``) from the
store's history, applying the selectors to both sides of every change the way the
API server's watch cache does: an object that starts matching arrives as ADDED, one
that stops matching as DELETED. It ends after ``timeoutSeconds``, when the client
goes away, or when the server stops; a resourceVersion older than the kept history
gets the documented single ``ERROR`` event with a 410 ``Expired`` Status.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuneship.testing.kube.errors import ApiError, bad_request
from tuneship.testing.kube.history import Change
from tuneship.testing.kube.resources import ResourceType
from tuneship.testing.kube.store import ObjectStore

# Real servers pick 30-60 minutes when a watch asks for no timeout.
DEFAULT_WATCH_TIMEOUT_S = 1800.0
BOOKMARK_INTERVAL_S = 1.0
_POLL_S = 0.25


class ChunkedResponse(Protocol):
    """What a stream writes to: the HTTP handler's chunked body."""

    def start_chunked(self, content_type: str) -> None: ...
    def chunk(self, data: bytes) -> None: ...
    def end_chunked(self) -> None: ...
    def client_gone(self) -> bool: ...


@dataclass(frozen=True)
class WatchRequest:
    """A watch's parameters, parsed and checked before the stream starts."""

    rtype: ResourceType
    namespace: str | None
    matches: Callable[[dict[str, Any]], bool]
    resource_version: int | None  # None: send current objects as ADDED first
    timeout_s: float
    bookmarks: bool

    @classmethod
    def parse(
        cls,
        rtype: ResourceType,
        namespace: str | None,
        matches: Callable[[dict[str, Any]], bool],
        query: dict[str, str],
    ) -> WatchRequest:
        """From query parameters; raises 400 for a resourceVersion that is not a number."""
        text = query.get("resourceVersion", "")
        try:
            rv = None if text in ("", "0") else int(text)
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_S)
        except ValueError:
            raise bad_request(f"invalid resource version: {text!r}") from None
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        return cls(rtype, namespace, matches, rv, timeout, bookmarks)


def stream_watch(out: ChunkedResponse, store: ObjectStore, watch: WatchRequest) -> None:
    """Serve one watch until its timeout, the client leaving, or the store closing."""
    deadline = time.monotonic() + watch.timeout_s
    out.start_chunked("application/json")
    if watch.resource_version is None:
        items, last = store.select(watch.rtype, watch.namespace, watch.matches)
        for item in items:
            _send(out, "ADDED", item)
    else:
        last = watch.resource_version
    quiet_since = time.monotonic()
    while not store.closed and time.monotonic() < deadline and not out.client_gone():
        try:
            changes, last_seen = store.changes_after(last, watch.rtype, watch.namespace)
        except ApiError as gone:
            out.chunk(_line({"type": "ERROR", "object": gone.status()}))
            break
        sent = sum(_send_change(out, change, watch.matches) for change in changes)
        last = last_seen
        if sent:
            quiet_since = time.monotonic()
        elif watch.bookmarks and time.monotonic() - quiet_since >= BOOKMARK_INTERVAL_S:
            bookmark = {"kind": watch.rtype.kind, "apiVersion": watch.rtype.api_version,
                        "metadata": {"resourceVersion": str(last)}}  # fmt: skip
            _send(out, "BOOKMARK", bookmark)
            quiet_since = time.monotonic()
        store.wait(last, max(0.0, min(_POLL_S, deadline - time.monotonic())))
    out.end_chunked()


def _send_change(
    out: ChunkedResponse, change: Change, matches: Callable[[dict[str, Any]], bool]
) -> int:
    now = change.type != "DELETED" and matches(change.obj)
    before = change.prev is not None and matches(change.prev)
    if change.type == "DELETED":
        kind = "DELETED" if before else ""
    elif now:
        kind = "MODIFIED" if before else "ADDED"
    else:
        kind = "DELETED" if before else ""
    if kind:
        _send(out, kind, change.obj)
    return 1 if kind else 0


def _send(out: ChunkedResponse, kind: str, obj: dict[str, Any]) -> None:
    out.chunk(_line({"type": kind, "object": obj}))


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def stream_log(
    out: ChunkedResponse, path: Path, finished: Callable[[], bool], tail_lines: int | None
) -> None:
    """``follow=true``: the log so far (its tail), then new output until the container ends."""
    out.start_chunked("text/plain")
    with path.open("rb") as log:
        out.chunk(tail(log.read(), tail_lines))
        while not out.client_gone():
            data = log.read()
            if data:
                out.chunk(data)
            elif finished():
                out.chunk(log.read())
                break
            else:
                time.sleep(0.1)
    out.end_chunked()


def tail(data: bytes, lines: int | None) -> bytes:
    """The last ``lines`` lines of ``data`` (all when None)."""
    if lines is None:
        return data
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its side (a readable socket with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable and isinstance(sock, ssl.SSLSocket):
            return True  # a watching client sends nothing more: this is its close_notify
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
