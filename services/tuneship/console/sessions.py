"""Console sessions: kept in memory, keyed by a random id in an HttpOnly cookie.

The token a person logs in with stays on the server beside their session (in the
``PipelineClient`` made with it); the cookie holds only the random session id. Every
session has its own CSRF token, which each form posts back.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneship.client import PipelineClient

COOKIE = "tuneship_console"
LOGIN_COOKIE = "tuneship_login"
"""Set by the login page: the login form posts its value back (login CSRF)."""


@dataclass
class Session:
    """One logged-in browser: its client of the controller and its CSRF token."""

    client: PipelineClient
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_used: float = field(default_factory=time.monotonic)

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf, str(sent))


class Sessions:
    """The sessions of one console process; an unused one expires after ``idle_s``.

    At most ``limit`` live at once: logging in past it drops the least recently used."""

    def __init__(self, idle_s: float, limit: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.idle_s = idle_s
        self.limit = limit
        self._clock = clock
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, client: PipelineClient) -> tuple[str, Session]:
        """A new session for ``client``; returns (its cookie value, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(client, last_used=self._clock())
        with self._lock:
            self._expire()
            while len(self._by_id) >= self.limit:
                oldest = min(self._by_id, key=lambda k: self._by_id[k].last_used)
                self._by_id.pop(oldest).client.close()
            self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value, or None (unknown or expired)."""
        if not session_id:
            return None
        with self._lock:
            self._expire()
            session = self._by_id.get(session_id)
            if session is not None:
                session.last_used = self._clock()
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            session = self._by_id.pop(session_id or "", None)
        if session is not None:
            session.client.close()

    def close(self) -> None:
        with self._lock:
            ended, self._by_id = list(self._by_id.values()), {}
        for session in ended:
            session.client.close()

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._by_id.items() if now - s.last_used > self.idle_s]:
            self._by_id.pop(key).client.close()
