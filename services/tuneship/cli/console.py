"""``tuneship serve console``: the web console in front of a controller."""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping

from rich.console import Console

from tuneship.cli.connect import connection
from tuneship.client import PipelineClient
from tuneship.common.errors import EXIT_OK, FailedPrecondition
from tuneship.console import ConsoleSettings, start_console

DEFAULT_PORT = 8080
err = Console(stderr=True)


def serve_console(settings: ConsoleSettings, env: Mapping[str, str]) -> int:
    """Serve the console until SIGTERM/SIGINT; returns the exit code.

    The controller is dialled as the CLI dials it (``TUNESHIP_CA``, ``TUNESHIP_CERT``,
    ``TUNESHIP_KEY`` for TLS); the token of each call is the one its person logged in
    with, never one of the console's own. Raises ``InvalidInput`` for a bad TLS file."""
    tls = connection(None, None, None, None, None, env)

    def connect(token: str | None) -> PipelineClient:
        return PipelineClient(settings.controller, token=token, ca=tls.ca,
                              cert=tls.cert, key=tls.key)  # fmt: skip

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        running = start_console(settings, connect)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            where="--host/--port",
            hint="stop what holds the port (`ss -ltnp`) or choose another --port",
        ) from exc
    err.print(f"console on {running.url} (controller {settings.controller})", highlight=False)
    try:
        stop.wait()
    finally:
        running.stop()
    return EXIT_OK


def console_settings(controller: str, host: str, port: int | None,
                     secure_cookie: bool) -> ConsoleSettings:  # fmt: skip
    return ConsoleSettings(controller=controller, host=host,
                           port=DEFAULT_PORT if port is None else port,
                           secure_cookie=secure_cookie)  # fmt: skip
