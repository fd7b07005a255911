"""Connecting to the state database, and riding out its restarts.

PostgreSQL restarts (an upgrade, a failover, a rescheduled pod) end every open
connection. ``pool_pre_ping`` replaces dead pooled connections on checkout, and
:func:`retrying` runs a state call again while the database does not answer, for a
bounded time, after which the call fails with :class:`StateUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from tuneship.common.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

URL_HINT = "check TUNESHIP_STATE_URL and that the database server is up"


class StateUnavailable(Unavailable):
    """The state database did not answer (for longer than the retry bound, or while a
    commit was in flight so its outcome is unknown). Nothing is lost: the scheduler
    re-attaches to the stage by its task_id once the database is back."""


@dataclass(frozen=True)
class Reconnect:
    """How long a state call waits for the database to come back."""

    give_up_after_s: float = 30.0
    """Then the call fails with ``StateUnavailable`` (gRPC UNAVAILABLE to a client)."""
    first_wait_s: float = 0.1
    """The first pause between tries; it doubles up to ``max_wait_s``."""
    max_wait_s: float = 1.0


POOL_SIZE = 8
POOL_OVERFLOW = 32
"""Connections kept, and opened beyond them under load: the gRPC server's threads, the
scheduler and the stage drivers read at once (writes take turns), and a caller left
waiting for a connection would fail after 30 s without the database being at fault."""


def open_engine(url: str) -> Engine:
    """An engine for ``url``. A server's pooled connections are checked before they are
    handed out (a restarted server ended them); a SQLite file does not go away, and
    the check would cost a query per transaction."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    pool: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    if sqlite and parsed.database in (None, "", ":memory:"):
        pool = {}  # one connection per thread; not a pool of its own
    engine = create_engine(url, pool_pre_ping=not sqlite, **pool)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def shown(engine: Engine) -> str:
    """The engine's URL with any password hidden, for messages and logs."""
    return engine.url.render_as_string(hide_password=True)


def is_transient(error: DBAPIError) -> bool:
    """True for a lost connection or a server that is down, starting or shutting down
    (and SQLite's "database is locked"): the same call can succeed a moment later."""
    return bool(error.connection_invalidated) or isinstance(error, OperationalError)


def retrying(call: Callable[[], T], policy: Reconnect, where: str) -> T:
    """``call()``, tried again on transient database errors for up to
    ``policy.give_up_after_s``; other errors propagate at once."""
    deadline = time.monotonic() + policy.give_up_after_s
    wait = policy.first_wait_s
    while True:
        try:
            return call()
        except DBAPIError as error:
            if not is_transient(error):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StateUnavailable(
                    f"the state database did not answer for {policy.give_up_after_s:.0f}s: "
                    f"{_first_line(error)}",
                    where=where, hint=URL_HINT,
                ) from error  # fmt: skip
            log.warning("state database unavailable (%s); trying again", _first_line(error))
            time.sleep(min(wait, left))
            wait = min(wait * 2, policy.max_wait_s)


def commit_lost(error: DBAPIError, where: str) -> StateUnavailable:
    """The error for a connection lost during COMMIT: the change may or may not have
    been applied, so it is not tried again blindly."""
    return StateUnavailable(
        f"the connection to the state database was lost while committing: {_first_line(error)}",
        where=where, hint=URL_HINT,
    )  # fmt: skip


def _first_line(error: DBAPIError) -> str:
    return str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else repr(error)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
