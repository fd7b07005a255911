"""Events name the worker task they came from in columns, with an index.

A controller that re-attaches to a running stage (after its own restart, or after
losing the database for a while) asks for the last worker sequence number it recorded
for that task, so the worker replays only what is missing. Before this revision that
meant reading and JSON-decoding the pipeline's whole event log, one row per training
step, for every re-attached stage; with ``task_id``/``task_seq`` columns and an index
on ``(pipeline_id, task_id, task_seq)`` it is one index lookup. Existing events are
filled in from their payloads.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BATCH = 5000


def upgrade() -> None:
    op.add_column("events", sa.Column("task_id", sa.String(120), nullable=False, server_default=""))
    op.add_column("events", sa.Column("task_seq", sa.Integer(), nullable=False, server_default="0"))
    _fill_from_payloads()
    op.create_index("ix_events_task", "events", ["pipeline_id", "task_id", "task_seq"])


def downgrade() -> None:
    op.drop_index("ix_events_task", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("task_seq")
        batch.drop_column("task_id")


def _fill_from_payloads() -> None:
    events = sa.table(
        "events",
        sa.column("pipeline_id", sa.String),
        sa.column("seq", sa.Integer),
        sa.column("payload_json", sa.Text),
        sa.column("task_id", sa.String),
        sa.column("task_seq", sa.Integer),
    )
    connection = op.get_bind()
    key = sa.tuple_(events.c.pipeline_id, events.c.seq)
    after: tuple[str, int] = ("", -1)
    while True:
        rows = connection.execute(
            sa.select(events.c.pipeline_id, events.c.seq, events.c.payload_json)
            .where(key > sa.tuple_(*after), events.c.payload_json.contains('"task"'))
            .order_by(events.c.pipeline_id, events.c.seq)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        changes = []
        for pipeline_id, seq, payload_json in rows:
            payload = json.loads(payload_json)
            if "task" in payload:
                changes.append({"p": pipeline_id, "s": seq, "tid": str(payload["task"]),
                                "tseq": int(payload.get("task_seq", 0))})  # fmt: skip
        if changes:
            connection.execute(
                events.update()
                .where(events.c.pipeline_id == sa.bindparam("p"), events.c.seq == sa.bindparam("s"))
                .values(task_id=sa.bindparam("tid"), task_seq=sa.bindparam("tseq")),
                changes,
            )
        after = (rows[-1][0], rows[-1][1])
