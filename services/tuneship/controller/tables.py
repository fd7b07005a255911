"""The state tables (the newest schema revision), the views read from them, and what one
transaction does with them: the pieces :class:`~tuneship.controller.state.StateStore`
puts together, one transaction per call.

A change to the tables needs a new revision in ``migrations/versions`` (``schema.py``
migrates a database to it on start).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tuneship.common.errors import NotFound
from tuneship.controller.machine import Phase, check_move


class Base(DeclarativeBase):
    pass


class PipelineRow(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    inputs_json: Mapped[str] = mapped_column(Text, default="{}")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(Text, default="")
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class StageRow(Base):
    __tablename__ = "stages"

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    task_id: Mapped[str] = mapped_column(String(120), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_base: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[str] = mapped_column(String(32), default="")
    started: Mapped[float] = mapped_column(Float, default=0.0)
    finished: Mapped[float] = mapped_column(Float, default=0.0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    outputs_json: Mapped[str] = mapped_column(Text, default="{}")
    summary_json: Mapped[str] = mapped_column(Text, default="{}")


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_task", "pipeline_id", "task_id", "task_seq"),)

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    stage: Mapped[str] = mapped_column(String(16), default="")
    kind: Mapped[str] = mapped_column(String(16))
    payload_json: Mapped[str] = mapped_column(Text)
    # The worker task an event came from and its number there (payload "task"/"task_seq").
    task_id: Mapped[str] = mapped_column(String(120), default="", server_default="")
    task_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


# The hot paths (a stage started or finished, an event, a pipeline read) run these
# statements, built once: SQLAlchemy then skips building and keying them on every call,
# and the ORM's loading and flushing, which were most of a transaction's CPU time.
PIPELINES = cast(Table, PipelineRow.__table__)
STAGES_TABLE = cast(Table, StageRow.__table__)
EVENTS = cast(Table, EventRow.__table__)
_NEXT_SEQ = (
    update(PIPELINES)
    .where(PIPELINES.c.id == bindparam("pid"))
    .values(last_seq=PIPELINES.c.last_seq + 1)
    .returning(PIPELINES.c.last_seq, PIPELINES.c.phase)
)
_INSERT_EVENT = insert(EVENTS)
_PIPELINE = select(PIPELINES).where(PIPELINES.c.id == bindparam("pid"))
_STAGES = (
    select(STAGES_TABLE)
    .where(STAGES_TABLE.c.pipeline_id == bindparam("pid"))
    .order_by(STAGES_TABLE.c.position)
)
_MOVE_STAGE = update(STAGES_TABLE).where(
    STAGES_TABLE.c.pipeline_id == bindparam("pid"),
    STAGES_TABLE.c.name == bindparam("stage"),
    STAGES_TABLE.c.phase == bindparam("source"),
)
_MOVE_PIPELINE = (
    update(PIPELINES)
    .where(PIPELINES.c.id == bindparam("pid"), PIPELINES.c.phase == bindparam("source"))
    .values(phase=bindparam("target"), error="", updated=bindparam("now"))
)


def _next_stages_queries() -> tuple[Any, Any]:
    """For every pending or running pipeline, highest priority then oldest first, its
    first stage that has not succeeded: all of them, and only those that may start now
    (pending past ``:now``, at most ``:per_stage`` per stage) plus every running one.
    Built once: the scheduler asks on every tick, and building the statement cost more
    than running it."""
    later = STAGES_TABLE.alias("later")
    first_open = (
        select(func.min(later.c.position))
        .where(later.c.pipeline_id == PIPELINES.c.id, later.c.phase != Phase.SUCCEEDED.value)
        .scalar_subquery()
    )
    stage = STAGES_TABLE.c
    columns = (PIPELINES.c.id, stage.name, stage.phase, stage.task_id, stage.attempts,
               stage.not_before)  # fmt: skip
    order = (PIPELINES.c.priority.desc(), PIPELINES.c.created)
    active = (
        select(*columns)
        .join(STAGES_TABLE, stage.pipeline_id == PIPELINES.c.id)
        .where(
            PIPELINES.c.phase.in_([Phase.PENDING.value, Phase.RUNNING.value]),
            stage.position == first_open,
        )
    )
    running = stage.phase == Phase.RUNNING.value
    startable = and_(stage.phase == Phase.PENDING.value, stage.not_before <= bindparam("now"))
    rank = func.row_number().over(partition_by=stage.name, order_by=order)
    ranked = (
        active.add_columns(PIPELINES.c.priority, PIPELINES.c.created, rank.label("rank"))
        .where(or_(running, startable))
        .subquery()
    )
    may_start = (
        select(*(ranked.c[c.key] for c in columns))
        .where(or_(ranked.c.phase == Phase.RUNNING.value, ranked.c.rank <= bindparam("per_stage")))
        .order_by(ranked.c.priority.desc(), ranked.c.created)
    )
    return active.order_by(*order), may_start


ALL_NEXT_STAGES, STARTABLE_NEXT_STAGES = _next_stages_queries()


@dataclass(frozen=True)
class StageView:
    """A stage as read from the store."""

    name: str
    phase: Phase
    task_id: str
    attempts: int
    retry_base: int
    error: str
    error_code: str
    started: float
    finished: float
    not_before: float
    outputs: dict[str, Any]
    summary: dict[str, Any]


@dataclass(frozen=True)
class PipelineView:
    """A pipeline with its stages, as read from the store."""

    id: str
    name: str
    phase: Phase
    spec_json: str
    priority: int
    labels: dict[str, str]
    created: float
    updated: float
    error: str
    stages: tuple[StageView, ...]
    inputs: dict[str, dict[str, Any]]

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)


@dataclass(frozen=True)
class EventView:
    pipeline_id: str
    seq: int
    time: float
    stage: str
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class NextStage:
    """The first stage of a pending or running pipeline that has not succeeded: the one
    the scheduler starts, waits on or re-attaches to."""

    pipeline_id: str
    name: str
    phase: Phase
    task_id: str
    attempts: int
    not_before: float


def stage_view(row: Any) -> StageView:
    """A stage from its ORM object or a row of the ``stages`` table."""
    return StageView(
        row.name, Phase(row.phase), row.task_id, row.attempts, row.retry_base, row.error,
        row.error_code,
        row.started, row.finished, row.not_before,
        json.loads(row.outputs_json), json.loads(row.summary_json),
    )  # fmt: skip


def has_labels(found: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(found.get(key) == value for key, value in wanted.items())


def move_pipeline(s: Session, pipeline_id: str, phase: Phase, error: str = "") -> None:
    row = s.get(PipelineRow, pipeline_id)
    if row is None:
        raise NotFound(f"no pipeline {pipeline_id!r}")
    if Phase(row.phase) is not phase:
        row.phase = check_move(f"pipeline {pipeline_id}", Phase(row.phase), phase).value
    row.error, row.updated = error, time.time()


def change_stage(s: Session, pipeline_id: str, stage: str, fields: dict[str, Any]) -> StageRow:
    row = s.get(StageRow, (pipeline_id, stage))
    if row is None:
        raise NotFound(f"no stage {stage!r} in pipeline {pipeline_id!r}")
    values = dict(fields)
    if "phase" in values:
        target = values.pop("phase")
        row.phase = check_move(f"stage {pipeline_id}/{stage}", Phase(row.phase), target).value
    for key in ("outputs", "summary"):
        if key in values:
            setattr(row, f"{key}_json", json.dumps(values.pop(key), sort_keys=True))
    for key, value in values.items():
        setattr(row, key, value)
    return row


def _next_seq(s: Session, pipeline_id: str) -> tuple[int, str]:
    """The pipeline's next event number and its phase. One ``UPDATE ... RETURNING`` on its
    row, which the database serializes: writers in other threads or processes never get
    the same number."""
    s.flush()  # the phase returned includes this transaction's changes
    found = s.connection().execute(_NEXT_SEQ, {"pid": pipeline_id}).first()
    if found is None:
        raise NotFound(f"no pipeline {pipeline_id!r}")
    return int(found[0]), str(found[1])


def _insert_event(
    s: Session, pipeline_id: str, seq: int, stage: str, kind: str, payload: dict[str, Any]
) -> None:
    s.connection().execute(
        _INSERT_EVENT,
        {"pipeline_id": pipeline_id, "seq": seq, "time": time.time(), "stage": stage,
         "kind": kind, "payload_json": json.dumps(payload),
         "task_id": str(payload.get("task", "")), "task_seq": int(payload.get("task_seq", 0))},
    )  # fmt: skip


def move_stage(
    s: Session, pipeline_id: str, stage: str, source: Phase, target: Phase, **values: Any
) -> None:
    """Move a stage from ``source`` to ``target`` setting ``values`` (columns), in one
    ``UPDATE``; a stage in another phase goes through the checked path
    (:func:`change_stage`: ``FailedPrecondition`` for a move the machine refuses)."""
    check_move(f"stage {pipeline_id}/{stage}", source, target)
    params = {"pid": pipeline_id, "stage": stage, "source": source.value}
    statement = _MOVE_STAGE.values(phase=target.value, **values)
    if s.connection().execute(statement, params).rowcount != 1:
        change_stage(s, pipeline_id, stage, {"phase": target, **values})
        s.flush()


def move_pipeline_from(s: Session, pipeline_id: str, source: Phase, target: Phase) -> bool:
    """Move a pipeline in ``source`` to ``target`` (error cleared); False if it was not
    in ``source`` (nothing changed)."""
    params = {"pid": pipeline_id, "source": source.value, "target": target.value,
              "now": time.time()}  # fmt: skip
    return bool(s.connection().execute(_MOVE_PIPELINE, params).rowcount == 1)


def add_pipeline(s: Session, row: dict[str, Any], stages: list[str]) -> None:
    """Insert a pending pipeline (``row``: its columns) with pending ``stages``, and its
    "submitted" event."""
    connection = s.connection()
    connection.execute(insert(PIPELINES), row)
    connection.execute(
        insert(STAGES_TABLE),
        [{"pipeline_id": row["id"], "name": stage, "position": position,
          "phase": Phase.PENDING.value} for position, stage in enumerate(stages)],
    )  # fmt: skip
    append(s, row["id"], "", "transition", {"message": "submitted", "phase": "pending"})


def append(s: Session, pipeline_id: str, stage: str, kind: str, payload: dict[str, Any]) -> int:
    seq, _ = _next_seq(s, pipeline_id)
    _insert_event(s, pipeline_id, seq, stage, kind, payload)
    return seq


def transition(
    s: Session, pipeline_id: str, stage: str, message: str, level: str, extra: dict[str, Any]
) -> int:
    seq, phase = _next_seq(s, pipeline_id)
    payload = {"message": message, "level": level, "phase": phase, **extra}
    _insert_event(s, pipeline_id, seq, stage, "transition", payload)
    return seq


def pipeline_view(s: Session, pipeline_id: str) -> PipelineView:
    connection = s.connection()
    row = connection.execute(_PIPELINE, {"pid": pipeline_id}).first()
    if row is None:
        raise NotFound(f"no pipeline {pipeline_id!r}", hint="`tuneship list` shows ids")
    stages = connection.execute(_STAGES, {"pid": pipeline_id})
    return _view(row, [stage_view(st) for st in stages])


def stage_of(s: Session, pipeline_id: str, stage: str) -> StageView:
    for row in s.connection().execute(_STAGES, {"pid": pipeline_id}):
        if row.name == stage:
            return stage_view(row)
    raise NotFound(f"no stage {stage!r} in pipeline {pipeline_id!r}")


def pipeline_views(s: Session, ids: list[str]) -> list[PipelineView]:
    """The pipelines ``ids`` in that order (two queries; ids no longer there are left out)."""
    if not ids:
        return []
    connection = s.connection()
    found = connection.execute(select(PIPELINES).where(PIPELINES.c.id.in_(ids)))
    rows = {r.id: r for r in found}
    stages: dict[str, list[StageView]] = {i: [] for i in rows}
    query = (
        select(STAGES_TABLE)
        .where(STAGES_TABLE.c.pipeline_id.in_(ids))
        .order_by(STAGES_TABLE.c.pipeline_id, STAGES_TABLE.c.position)
    )
    for stage in connection.execute(query):
        stages[stage.pipeline_id].append(stage_view(stage))
    return [_view(rows[i], stages[i]) for i in ids if i in rows]


def _view(row: Any, stages: list[StageView]) -> PipelineView:
    return PipelineView(
        row.id, row.name, Phase(row.phase), row.spec_json, row.priority,
        json.loads(row.labels_json), row.created, row.updated, row.error,
        tuple(stages), json.loads(row.inputs_json),
    )  # fmt: skip
