"""The console's HTTP application: routes, the session and CSRF checks, the server.

Every page and endpoint needs a session except ``/login``, ``/healthz`` and
``/static/``: without one the answer is 401. A POST without the session's CSRF token
is refused with 403. No login is asked for only when the console listens on loopback
and the controller takes calls without a token (embedded mode on one machine).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

from tuneship.console import chat, compare, pages
from tuneship.console import files as downloads
from tuneship.console.sessions import COOKIE
from tuneship.console.state import (
    SESSION_KEY,
    STATE_KEY,
    ClientFactory,
    ConsoleSettings,
    ConsoleState,
    set_session_cookie,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/login", "/healthz")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers on every answer; a session for everything but the public paths; the
    session's CSRF token on every POST."""
    try:
        response = await _guarded(request.app[STATE_KEY], request, handler)
    except web.HTTPException as exc:  # redirects and error pages: raised, not returned
        _add_headers(request, exc)
        raise
    _add_headers(request, response)
    return response


def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:  # a stream sent its headers already (with its own)
        return
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


async def _guarded(state: ConsoleState, request: web.Request, handler: Handler
                   ) -> web.StreamResponse:  # fmt: skip
    if request.path in PUBLIC or request.path.startswith("/static/"):
        return await handler(request)
    cookie = request.cookies.get(COOKIE)
    session = state.sessions.get(cookie)
    created = None
    if session is None:
        if await state.needs_login():
            raise pages.unauthorized(state, request)
        created, session = state.sessions.create(state.connect(None))
    if request.method == "POST":
        form = await request.post()
        sent = form.get("csrf") or request.headers.get("X-CSRF-Token")
        if created is not None or not session.csrf_ok(str(sent) if sent else None):
            raise pages.forbidden(state, request)
    request[SESSION_KEY] = session
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if created is not None:
            set_session_cookie(state, exc, created)
        raise
    if created is not None and not response.prepared:
        set_session_cookie(state, response, created)
    return response


def console_app(settings: ConsoleSettings, connect: ClientFactory) -> web.Application:
    """The console as an aiohttp application; ``connect(token)`` makes the clients."""
    app = web.Application(middlewares=[guard], client_max_size=1 << 20)
    state = ConsoleState(settings, connect)
    app[STATE_KEY] = state
    static = Path(str(files("tuneship.console") / "static"))
    app.router.add_static("/static/", static, name="static")
    pages.add_routes(app.router)
    chat.add_routes(app.router)
    compare.add_routes(app.router)
    downloads.add_routes(app.router)
    app.on_cleanup.append(_close_sessions)
    return app


async def _close_sessions(app: web.Application) -> None:
    app[STATE_KEY].sessions.close()


@dataclass
class RunningConsole:
    """A console serving on its own thread; ``url`` is where it answers."""

    url: str
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def start_console(settings: ConsoleSettings, connect: ClientFactory) -> RunningConsole:
    """Serve the console on a thread of its own; returns once it listens.

    Raises ``OSError`` when the address cannot be bound."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(console_app(settings, connect), access_log=None, shutdown_timeout=1)
    thread = threading.Thread(target=loop.run_forever, name="console", daemon=True)
    thread.start()

    async def listen() -> int:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        address: Any = runner.addresses[0]
        return int(address[1])

    port = asyncio.run_coroutine_threadsafe(listen(), loop).result(timeout=30)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return RunningConsole(f"http://{host}:{port}", loop, runner, thread)
