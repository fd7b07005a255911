"""What the console's handlers share: settings, sessions, templates, the clients."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import jinja2
from aiohttp import web

from tuneship.client import PipelineClient
from tuneship.common.errors import TuneshipError
from tuneship.console.sessions import COOKIE, Session, Sessions
from tuneship.console.views import refused

ClientFactory = Callable[[str | None], PipelineClient]
"""A client of the controller that sends this token (None: no token)."""

SESSION_KEY = web.RequestKey("session", Session)
"""Where a request carries its ``Session``."""


@dataclass(frozen=True)
class ConsoleSettings:
    """How the console runs."""

    controller: str
    """The controller's ``host:port`` (or ``https://host``), as the CLI's ``--controller``."""
    host: str = "127.0.0.1"
    """Address to listen on; beyond loopback a login is always asked for."""
    port: int = 8080
    """Port to listen on (0: any free port)."""
    session_idle_s: float = 8 * 3600
    """A session unused this long ends (the person logs in again)."""
    refresh_s: float = 3.0
    """How often the pipelines page refreshes its table."""
    secure_cookie: bool = False
    """Mark the session cookie ``Secure``: set it when people reach the console over
    HTTPS (an Ingress with TLS), so that the browser never sends it in the clear."""


class ConsoleState:
    """What the handlers share: settings, sessions, templates, the controller's clients."""

    def __init__(self, settings: ConsoleSettings, connect: ClientFactory) -> None:
        self.settings = settings
        self.connect = connect
        self.sessions = Sessions(settings.session_idle_s)
        self.open_mode: bool | None = None if is_loopback(settings.host) else False
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("tuneship.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )  # fmt: skip

    async def needs_login(self) -> bool:
        """False only on loopback with a controller that answers without a token; asked
        of the controller once it answers (until then, a login is asked for)."""
        if self.open_mode is None:
            try:
                client = self.connect(None)
                try:
                    await asyncio.to_thread(client.list, page_size=1)
                finally:
                    client.close()
                self.open_mode = True
            except TuneshipError as exc:
                if refused(exc):
                    self.open_mode = False
                return True
        return not self.open_mode


STATE_KEY = web.AppKey("state", ConsoleState)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def set_session_cookie(state: ConsoleState, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE, value, httponly=True, samesite="Strict", path="/",
        secure=state.settings.secure_cookie,
    )  # fmt: skip
