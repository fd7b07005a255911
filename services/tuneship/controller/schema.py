"""The state database's schema version: Alembic migrations, applied when a controller starts.

- A new database is created at the newest revision (head).
- A database made before migrations existed (the tables, no version table) is stamped
  as revision ``0001``, which is exactly that schema, then upgraded.
- A database at a revision this code does not know was upgraded by a newer tuneship:
  starting would misread or damage it, so :func:`migrate` refuses.

On PostgreSQL the whole check-and-upgrade runs in one transaction under an advisory
lock, so two controllers starting at once on one database migrate it once (the second
waits, then finds it current). SQLite has a single writer anyway.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from tuneship.common.errors import FailedPrecondition

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "tuneship_schema_version"
"""Alembic's version table, under a name of its own so that a database shared with
another Alembic-managed application never mixes the two histories up."""
BEFORE_MIGRATIONS = "0001"
MIGRATION_LOCK_KEY = 0x74756E65  # any fixed 64-bit number, the same in every controller ("tune")
_IN_PROCESS = threading.Lock()  # Alembic's `context` is process-global


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini), for ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None: not versioned)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def migrate(engine: Engine, shown_url: str) -> str:
    """Bring the database at ``engine`` to head; returns the revision it is at now.

    ``FailedPrecondition`` when the database is newer than this code.
    """
    config = alembic_config()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    with _IN_PROCESS, engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        current = current_revision(connection)
        if current is None and inspect(connection).has_table("pipelines"):
            command.stamp(config, BEFORE_MIGRATIONS)
        elif current is not None and current not in known:
            raise FailedPrecondition(
                f"the state database is at schema revision {current!r}, which this tuneship "
                f"does not know (it knows up to {head()!r}): a newer tuneship has upgraded it, "
                "and this one would misread it",
                where=shown_url,
                hint="run the newer tuneship (upgrade this installation or image), or point "
                "TUNESHIP_STATE_URL at another database",
            )
        command.upgrade(config, "head")
        connection.commit()
    return head()
