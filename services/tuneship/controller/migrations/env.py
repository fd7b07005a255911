"""Alembic's environment: migrations run on the connection ``schema.migrate`` opened.

The caller holds the transaction (and, on PostgreSQL, the advisory lock), so nothing
here begins or commits anything; there is no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

from tuneship.controller.schema import VERSION_TABLE

if context.is_offline_mode():
    raise RuntimeError("tuneship migrations run on start, against the database itself")

context.configure(
    connection=context.config.attributes["connection"],
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
